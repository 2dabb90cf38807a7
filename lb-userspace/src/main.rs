//! `veer`: the agent and the CLI that drives it.

fn main() -> std::process::ExitCode {
    veer::cli::main()
}
