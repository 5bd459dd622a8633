//! The HTTP side: signed Khoros webhook requests over plain HTTP/1.1 keep-alive connections.
//!
//! Built on hyper's connection API rather than a pooled client: one connection per load
//! connection, no pool bookkeeping, so the generator spends as little CPU as possible on the
//! machine it shares with the service under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use shared::auth::hmac::{SignatureHeaders, HEADER_API_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use shared::auth::{Clock, SystemClock};
use shared::Secret;
use tokio::net::TcpStream;

use super::driver::{Failure, Job, Target};
use super::events::{Event, EventSource};

/// Told about every accepted event: the event and when it was meant to leave (open loop) or
/// left (closed loop).
pub type Observer = Arc<dyn Fn(&Event, Instant) + Send + Sync>;

/// HMAC v2 credentials of the sender.
#[derive(Clone, Debug)]
pub struct HmacCredentials {
    pub api_key: String,
    pub secret: Secret,
}

/// Posts generated events to one URL.
pub struct HttpTarget {
    addr: SocketAddr,
    /// `Host` header (`127.0.0.1:<port>`), also what the signature covers.
    authority: String,
    path: String,
    /// The URL the signature is computed for.
    url: String,
    credentials: Option<HmacCredentials>,
    events: Arc<EventSource>,
    /// The status that counts as success (202 for the ingress and the bare server).
    expect: StatusCode,
    observer: Option<Observer>,
    no_smm: HeaderMap,
}

impl HttpTarget {
    /// `url` must be `http://<ip>:<port><path>`.
    pub fn new(
        url: &str,
        credentials: Option<HmacCredentials>,
        events: Arc<EventSource>,
    ) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .map_err(|e| anyhow::anyhow!("{url}: host must be ip:port ({e})"))?;
        Ok(Self {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
            url: url.to_string(),
            credentials,
            events,
            expect: StatusCode::ACCEPTED,
            observer: None,
            no_smm: HeaderMap::new(),
        })
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn request(&self, event: &Event, now_ms: i64) -> Request<Full<Bytes>> {
        let mut builder = Request::post(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("x-amzn-RequestId", event.request_id.as_str());
        if let Some(c) = &self.credentials {
            let sig = SignatureHeaders::sign(
                &c.api_key,
                &c.secret,
                now_ms,
                "POST",
                &self.url,
                &event.body,
                &self.no_smm,
            );
            builder = builder
                .header(HEADER_API_KEY, sig.api_key)
                .header(HEADER_TIMESTAMP, sig.timestamp)
                .header(HEADER_SIGNATURE, sig.signature);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(&event.body)))
            .expect("valid request parts")
    }
}

impl Target for HttpTarget {
    type Conn = SendRequest<Full<Bytes>>;

    async fn connect(&self) -> Result<Self::Conn, Failure> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|_| Failure::Transport("connect"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Transport("connect"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn send(&self, conn: &mut Self::Conn, job: Job) -> Result<(), Failure> {
        let now_ms = SystemClock.now_ms();
        let event = self.events.event(job.seq, now_ms);
        let request = self.request(&event, now_ms);
        let left = Instant::now();
        conn.ready()
            .await
            .map_err(|_| Failure::Transport("closed"))?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|_| Failure::Transport("io"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Transport("io"))?;
        if status != self.expect {
            return Err(Failure::Status(status.as_u16()));
        }
        if let Some(observer) = &self.observer {
            observer(&event, job.intended.unwrap_or(left));
        }
        Ok(())
    }
}
