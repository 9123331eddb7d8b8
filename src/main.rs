//! Thin entry point: all logic lives in the library so tests can reach it.
fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
