//! The shipped deploy/ files stay valid: example configs parse and validate, units reference real commands.

use std::path::Path;

use cairn::config::Config;

fn deploy(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

#[test]
fn example_configs_parse_and_validate() {
    for name in ["cairn.example.toml", "cairn-12disk.example.toml"] {
        let cfg = Config::load(&deploy(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let twelve = Config::load(&deploy("cairn-12disk.example.toml"))
        .unwrap()
        .store_config();
    assert_eq!(twelve.disks.len() + twelve.spares.len(), 12);
    assert_eq!(twelve.spares.len(), 2);
    assert_eq!((twelve.k, twelve.m), (6, 2));
}

#[test]
fn units_and_cron_call_existing_commands() {
    let bin = env!("CARGO_BIN_EXE_cairn");
    for (file, args) in [
        ("cairn.service", vec!["serve", "--help"]),
        ("cairn-scrub.service", vec!["scrub", "--help"]),
        ("cairn-scrub.cron", vec!["scrub", "--help"]),
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        assert!(text.contains(&format!("cairn {}", args[0])), "{file}");
        let out = std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: `cairn {}` is not a command",
            args.join(" ")
        );
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in ["--config", "--wait", "--throttle"] {
            if text.contains(flag) && args[0] == "scrub" {
                assert!(
                    help.contains(flag),
                    "{file} uses {flag}, which `cairn scrub` does not have"
                );
            }
        }
    }
    let timer = std::fs::read_to_string(deploy("cairn-scrub.timer")).unwrap();
    assert!(timer.contains("OnCalendar=Sun"));
}
