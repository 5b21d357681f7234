//! Decision and reload cost of the policy engine without building the whole gateway:
//! `cargo run --release -p fedgate-policy --example bench [rules]` (default 10000).
//! `fedgate bench policy` prints the same report.

fn main() {
    let rules = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!("{}", fedgate_policy::bench(rules));
}
