//! The `loadgen` binary: the load generator and the benchmark suite (`dev/bench`).
//! It parses the command line and hands off to [`loadgen::cli`]; run
//! `loadgen help` for the commands.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadgen::cli::main(std::env::args().skip(1).collect()).await
}
