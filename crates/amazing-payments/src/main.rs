//! The `amazing-payments` binary; see [`amazing_payments::cli`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    amazing_payments::cli::main().await
}
