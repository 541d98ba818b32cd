//! `cairn key create|list|delete`: access keys limited to named buckets, read-only or read-write. They live
//! in `<data>/keys.json` (mode 0600); a running server picks up changes by itself.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn::auth::{Permission, keys};

#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
    /// Data directory [default: ./cairn-data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data: Option<PathBuf>,
    /// Configuration file, to find the data directory
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key for the named buckets and print it (the secret is shown only now).
    Create {
        /// A bucket the key may use (repeat for several)
        #[arg(long = "bucket", value_name = "NAME", required = true)]
        buckets: Vec<String>,
        /// Only read (GET, HEAD, list); default is read-write
        #[arg(long)]
        read_only: bool,
    },
    /// List keys (without secrets).
    List,
    /// Delete a key.
    Delete {
        /// The access key id
        access_key: String,
    },
}

pub fn run(a: KeyArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::serve::effective_config(a.config.as_ref(), a.data)?;
    let dir = &cfg.data_dir;
    match a.command {
        KeyCommand::Create { buckets, read_only } => {
            let perm = if read_only {
                Permission::ReadOnly
            } else {
                Permission::ReadWrite
            };
            let k = keys::create_key(dir, &buckets, perm)?;
            println!("access key: {}", k.access_key);
            println!("secret key: {}", k.secret_key);
            println!("buckets:    {}", k.buckets.join(","));
            println!("permission: {}", k.permission);
        }
        KeyCommand::List => {
            let list = keys::load_keys(&keys::keys_path(dir))?;
            if list.is_empty() {
                println!("no keys (the root key is not listed)");
            }
            for k in list {
                println!(
                    "{}  {:<10}  {}",
                    k.access_key,
                    k.permission.to_string(),
                    k.buckets.join(",")
                );
            }
        }
        KeyCommand::Delete { access_key } => {
            if !keys::delete_key(dir, &access_key)? {
                eprintln!("cairn: no key {access_key}");
                return Ok(ExitCode::from(1));
            }
            println!("deleted {access_key}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
