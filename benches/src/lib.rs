//! Criterion benchmarks live in benches/hot_paths.rs; run them with `cargo bench -p herald-benches`.
