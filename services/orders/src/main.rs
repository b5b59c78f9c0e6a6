use common::{config, server, telemetry};
use orders::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load_or_exit("orders", Settings::from_env);
    telemetry::init("orders", settings.serving.development);
    let app = Application::build(settings).await?;
    app.run_until(server::shutdown_token()).await
}
