use client::{Application, Settings};
use common::{config, server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load_or_exit("client", Settings::from_env);
    telemetry::init("client", settings.serving.development);
    let app = Application::build(settings).await?;
    app.run_until(server::shutdown_token()).await
}
