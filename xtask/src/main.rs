//! `cargo xtask`: everything a fresh machine needs, as Rust, no shell scripts.

mod bench;
mod build;
mod dist;
mod fuzz;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "veer development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent).
    Setup(setup::Options),
    /// Build the `veer` binary (and the XDP objects it embeds).
    Build(build::Options),
    /// Build the Debian package (target/dist/veer_VERSION_ARCH.deb).
    Dist(dist::Options),
    /// Run every test: unit, packet fixtures, network-namespace end-to-end (needs root).
    Test(test::Options),
    /// Data-path and control-plane benchmarks (needs root).
    Bench(bench::Options),
    /// Seeded random frames through the real XDP object, checking its invariants (needs root).
    Fuzz(fuzz::Options),
    /// Without arguments: a small lab with demo traffic. With arguments: `veer agent ARGS`.
    Run(run::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(o) => setup::run(&o),
        Command::Build(o) => build::run(&o),
        Command::Dist(o) => dist::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Bench(o) => bench::run(&o),
        Command::Fuzz(o) => fuzz::run(&o),
        Command::Run(o) => run::run(&o),
    }
}
