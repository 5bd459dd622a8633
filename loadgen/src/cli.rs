//! The `loadgen` command line: `bench`, `http`, `publish`, `e2e`, `bare-server`, `naive-server`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use shared::auth::HmacKeys;
use shared::config::parse_duration;
use shared::Secret;
use tokio::net::TcpListener;

use super::bench::{self, BenchOptions, PHASES, WORKER_PHASES};
use super::driver::{self, Load, Pace};
use super::e2e::{self, Anchor};
use super::events::{EventSource, Spread};
use super::http::{HmacCredentials, HttpTarget};
use super::publish::PublishTarget;
use super::stats::LoadReport;

pub const USAGE: &str = "\
loadgen: load generator and benchmark of khoros-kore-bridge

  loadgen bench [--quick] [--skip bare,publish,naive,node,ingress,e2e,burst,scaling,cluster]
                [--only worker | --only e2e,burst,...]
                [--bin-dir target/release] [--out bench] [--connections 64]
      The whole benchmark (what dev/bench runs): starts its own nats-server (NATS_SERVER_BIN),
      services, simulators and ceilings (node: NODE_BIN or node on the PATH) as processes,
      prints one table, writes <out>/results/<stamp>.json, <out>/latest.json and
      <out>/latest.md. `--only worker` runs the worker phases (e2e, burst, scaling) alone.

  loadgen http --url http://127.0.0.1:8080/khoros/events [--rate 1000 | --connections 64]
      Signed Khoros events to an ingress (or any URL answering 202). With --rate: open loop at
      that many requests/s (latency from the intended send time); without: closed loop.

  loadgen publish --nats-url nats://127.0.0.1:4222 [--rate R] [--connections N]
      The same events straight to JetStream (KHOROS_EVENTS must exist), each awaited.

  loadgen e2e --url http://127.0.0.1:8080/khoros/events --khoros-sim http://127.0.0.1:8081
              --bot-latency 50ms --rate 200 [--nats-url nats://...]
      Drives a running stack at a fixed message rate; matches the bot's replies at khoros-sim;
      prints end-to-end latency, pipeline overhead (minus the bot latency), duplicates, losses.

  loadgen bare-server --listen 127.0.0.1:8090
      An axum server that answers 202 and does nothing else (the HTTP ceiling).

  loadgen naive-server --listen 127.0.0.1:8091 --nats-url nats://127.0.0.1:4222
                       [--hmac-key K --hmac-secret S]
      The naive one-write ingress (a ceiling): verifies HMAC v2, reads `type`, publishes the
      body once to KHOROS_EVENTS (which must exist) with Nats-Msg-Id = x-amzn-RequestId,
      awaits the PubAck, answers 202.

Common options: --duration 10s --warmup 2s --partitions 16 --update-every 5 (every 5th event is
an update; 0 = messages only) --conversations 4096 --spread even|random|pool|unique --hmac-key bridge-hmac-key
--hmac-secret <secret> (default: the ./dev/up secret) --no-sign --json <file>
";

/// `--name value` pairs and bare `--flag`s.
struct Args {
    values: HashMap<String, String>,
}

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut values = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let Some(name) = args[i].strip_prefix("--") else {
                bail!("unexpected argument {:?}\n\n{USAGE}", args[i]);
            };
            match args.get(i + 1).filter(|v| !v.starts_with("--")) {
                Some(value) => {
                    values.insert(name.to_string(), value.clone());
                    i += 2;
                }
                None => {
                    values.insert(name.to_string(), "true".into());
                    i += 1;
                }
            }
        }
        Ok(Self { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    fn required(&self, name: &str) -> anyhow::Result<String> {
        self.get(name)
            .map(str::to_string)
            .with_context(|| format!("--{name} is required\n\n{USAGE}"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }

    fn duration(&self, name: &str, default: Duration) -> anyhow::Result<Duration> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }

    fn load(&self) -> anyhow::Result<Load> {
        let rate: Option<f64> = self.get("rate").map(str::parse).transpose()?;
        Ok(Load {
            pace: rate.map_or(Pace::Closed, Pace::Rate),
            connections: self.num("connections", if rate.is_some() { 32 } else { 64 })?,
            warmup: self.duration("warmup", Duration::from_secs(2))?,
            duration: self.duration("duration", Duration::from_secs(10))?,
            timeout: self.duration("timeout", Duration::from_secs(10))?,
            first_seq: 0,
        })
    }

    fn events(&self) -> anyhow::Result<Arc<EventSource>> {
        let spread: Spread = self
            .string("spread", "even")
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        Ok(Arc::new(EventSource::new(
            &format!("{:08x}", rand::random::<u32>()),
            &self.string("app-id", "kore-bridge"),
            self.num("partitions", 16)?,
            self.num("conversations", 4096)?,
            self.num("update-every", 5)?,
            spread,
        )))
    }

    fn credentials(&self) -> Option<HmacCredentials> {
        (!self.flag("no-sign")).then(|| HmacCredentials {
            api_key: self.string("hmac-key", "bridge-hmac-key"),
            secret: Secret::new(self.string("hmac-secret", "dev-hmac-secret")),
        })
    }

    /// Binds `--listen` (or `default`) and says where `what` listens.
    async fn listener(&self, what: &str, default: &str) -> anyhow::Result<TcpListener> {
        let listen = self.string("listen", default);
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("{what} on http://{}", listener.local_addr()?);
        Ok(listener)
    }

    fn write_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = self.get("json") {
            std::fs::write(path, serde_json::to_string_pretty(value)?)
                .with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    }
}

/// Runs the command line `args` (without the program name).
pub async fn main(args: Vec<String>) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    let args = Args::parse(rest)?;
    if args.flag("help") {
        // `loadgen bench --help` must print the usage, not start a four-minute benchmark.
        print!("{USAGE}");
        return Ok(());
    }
    match command.as_str() {
        "bench" => bench_command(&args).await,
        "http" => {
            let target = Arc::new(HttpTarget::new(
                &args.required("url")?,
                args.credentials(),
                args.events()?,
            )?);
            let load = args.load()?;
            let report = LoadReport::new(&load, &driver::run(target, load).await);
            println!("{}", report.line());
            args.write_json(&report)
        }
        "publish" => {
            let client = async_nats::connect(args.required("nats-url")?).await?;
            let target = Arc::new(PublishTarget::new(
                async_nats::jetstream::new(client),
                args.events()?,
            ));
            let load = args.load()?;
            let report = LoadReport::new(&load, &driver::run(target, load).await);
            println!("{}", report.line());
            args.write_json(&report)
        }
        "e2e" => e2e_command(&args).await,
        "bare-server" => {
            let listener = args.listener("bare server", "127.0.0.1:8090").await?;
            super::bare::serve(
                listener,
                &args.string("path", "/khoros/events"),
                shared::shutdown::on_signal(),
            )
            .await?;
            Ok(())
        }
        "naive-server" => {
            let listener = args.listener("naive ingress", "127.0.0.1:8091").await?;
            let credentials = args
                .credentials()
                .context("the naive ingress verifies signatures: drop --no-sign")?;
            super::naive::serve(
                listener,
                &args.string("path", "/khoros/events"),
                &args.required("nats-url")?,
                HmacKeys::single(&credentials.api_key, &credentials.secret),
                shared::shutdown::on_signal(),
            )
            .await
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

async fn bench_command(args: &Args) -> anyhow::Result<()> {
    let bin_dir = match args.get("bin-dir") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .context("loadgen has a directory")?
            .to_path_buf(),
    };
    let out = PathBuf::from(args.string("out", "bench"));
    let mut options = if args.flag("quick") {
        BenchOptions::quick(bin_dir, out)
    } else {
        BenchOptions::full(bin_dir, out)
    };
    options.connections = args.num("connections", options.connections)?;
    if let Some(skip) = args.get("skip") {
        options.skip = phases("skip", skip)?;
    }
    if let Some(only) = args.get("only") {
        let only = phases("only", only)?;
        options.skip.extend(
            PHASES
                .iter()
                .filter(|p| !only.iter().any(|o| o == *p))
                .map(|p| p.to_string()),
        );
    }
    let report = bench::run(options).await?;
    if report.checks.iter().any(|c| !c.pass) {
        println!("some targets were missed (see the table above)");
    }
    Ok(())
}

/// A comma-separated list of phases; `worker` stands for the worker phases.
fn phases(option: &str, list: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in list.split(',') {
        match name {
            "worker" => out.extend(WORKER_PHASES.iter().map(|p| p.to_string())),
            p if PHASES.contains(&p) => out.push(p.to_string()),
            other => bail!(
                "--{option} {other:?}: the phases are {} (or worker)",
                PHASES.join(", ")
            ),
        }
    }
    Ok(out)
}

async fn e2e_command(args: &Args) -> anyhow::Result<()> {
    let khoros = args.required("khoros-sim")?;
    let bot = args.duration("bot-latency", Duration::from_millis(50))?;
    let mut load = args.load()?;
    let events = args.events()?;
    let message_rate: f64 = args.num("rate", 200.0)?;
    let every = args.num("update-every", 5u64)?;
    load.pace = Pace::Rate(match every {
        0 | 1 => message_rate,
        n => message_rate * n as f64 / (n - 1) as f64,
    });
    let (accepted, observer) = e2e::recorder();
    let target = Arc::new(
        HttpTarget::new(&args.required("url")?, args.credentials(), events)?
            .with_observer(observer),
    );
    let http = reqwest::Client::new();
    let before = e2e::logged_calls(&http, &khoros).await?;
    let anchor = Anchor::now();
    let measured = driver::run(target, load).await;
    let ingress = LoadReport::new(&load, &measured);
    println!("ingress ack: {}", ingress.line());
    let expected = before + accepted.lock().expect("recorder").messages.len() as u64;
    e2e::wait_for_calls(&http, &khoros, expected, Duration::from_secs(10)).await?;
    let unprocessed = match args.get("nats-url") {
        Some(url) => {
            let js = async_nats::jetstream::new(async_nats::connect(url).await?);
            Some(e2e::unprocessed(&js).await?)
        }
        None => None,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replies = e2e::fetch_replies(&http, &khoros).await?;
    let mut report = {
        let accepted = accepted.lock().expect("recorder");
        e2e::analyse(
            &accepted,
            &replies,
            &anchor,
            measured.started + load.warmup,
            bot,
        )
    };
    report.unprocessed = unprocessed;
    println!("end to end:  {}", report.end_to_end.line());
    println!("overhead:    {}", report.overhead.line());
    println!(
        "messages {} updates {} replies {} duplicates {} lost {} unexpected {}",
        report.messages_accepted,
        report.updates_accepted,
        report.replies,
        report.duplicates,
        report.lost,
        report.unexpected
    );
    args.write_json(&serde_json::json!({ "ingress": ingress, "e2e": report }))
}
