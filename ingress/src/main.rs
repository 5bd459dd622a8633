//! The `ingress` binary: everything is in [`ingress::process::run`].

fn main() -> anyhow::Result<()> {
    ingress::process::run()
}
