use auth::{Application, Settings};
use common::{config, server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load_or_exit("auth", Settings::from_env);
    telemetry::init("auth", settings.serving.development);
    let app = Application::build(settings).await?;
    app.run_until(server::shutdown_token()).await
}
