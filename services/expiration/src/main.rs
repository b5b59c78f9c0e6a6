use common::{config, server, telemetry};
use expiration::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load_or_exit("expiration", Settings::from_env);
    telemetry::init("expiration", settings.serving.development);
    let app = Application::build(settings).await?;
    app.run_until(server::shutdown_token()).await
}
