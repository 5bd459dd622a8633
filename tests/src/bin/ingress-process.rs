//! The ingress as a separate process for tests that measure it from outside (memory, open
//! connections): the same code as the `ingress` binary ([`ingress::cli::main`]), built
//! inside this package so tests can find it through `CARGO_BIN_EXE_ingress-process`.

fn main() -> std::process::ExitCode {
    ingress::cli::main(std::env::args())
}
