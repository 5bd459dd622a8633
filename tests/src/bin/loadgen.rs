//! The `loadgen` binary: the load generator and the benchmark suite (`dev/bench`).
//! It parses the command line and hands off to [`bridge_tests::loadgen::cli`]; run
//! `loadgen help` for the commands.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bridge_tests::loadgen::cli::main(std::env::args().skip(1).collect()).await
}
