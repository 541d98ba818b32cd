fn main() {
    println!("cairn");
}
