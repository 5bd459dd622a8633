//! The `ingress` binary: everything is in [`ingress::cli::main`].

/// mimalloc: per-request allocations on a multi-threaded runtime contended on glibc malloc's
/// arena locks (a seventh of the ingress' CPU in a profile under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ingress::cli::main(std::env::args())
}
