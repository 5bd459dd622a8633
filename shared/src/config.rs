//! Typed configuration from the environment.
//!
//! Every service reads its settings through an [`Env`], which is the process environment in
//! production and a map in tests. Secrets may be given inline (`X`) or as a file (`X_FILE`),
//! so Kubernetes Secrets can be mounted; the file wins when both are set.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// A configuration problem, reported at start-up with the variable's name.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{name} is required")]
    Missing { name: String },
    #[error("{name}: invalid value {value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{name}: cannot read {path}: {source}")]
    File {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// A string that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used (signing, comparing, sending).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where settings come from: the process environment or, in tests, a fixed map.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: Option<HashMap<String, String>>,
}

impl Env {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self { vars: None }
    }

    /// Reads only the given pairs (tests, tools).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value; empty strings count as unset so `X=` in a shell means "default".
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match &self.vars {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing {
            name: name.to_string(),
        })
    }

    /// Parses a value with `FromStr`, falling back to `default` when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name: name.to_string(),
                    value: raw,
                    reason: e.to_string(),
                }),
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, &raw, "expected true or false")),
            },
        }
    }

    /// A duration such as `250ms`, `2s`, `5m`, `24h`, `7d` (a bare number means seconds).
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse_duration(&raw).map_err(|reason| invalid(name, &raw, reason)),
        }
    }

    /// A secret from `NAME_FILE` (trailing newline trimmed) or `NAME`.
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        let file_var = format!("{name}_FILE");
        if let Some(path) = self.get(&file_var) {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                name: file_var.clone(),
                path: path.clone(),
                source,
            })?;
            let text = text.trim_end_matches(['\r', '\n']).to_string();
            if text.is_empty() {
                return Err(invalid(&file_var, &path, "file is empty"));
            }
            return Ok(Some(Secret(text)));
        }
        Ok(self.get(name).map(Secret))
    }

    pub fn required_secret(&self, name: &str) -> Result<Secret, ConfigError> {
        self.secret(name)?.ok_or_else(|| ConfigError::Missing {
            name: format!("{name} (or {name}_FILE)"),
        })
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Parses `250ms`, `2s`, `5m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, &'static str> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a number with a unit")?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        _ => return Err("unit must be one of ms, s, m, h, d"),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err("duration must be a non-negative number");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How to reach NATS; read by every service.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `NATS_URL`, comma-separated server list allowed.
    pub url: String,
    /// `NATS_CREDS_FILE`: optional credentials file for a secured cluster.
    pub creds_file: Option<String>,
    /// `NATS_NAME`: connection name shown in `nats-server` monitoring.
    pub name: String,
}

impl NatsConfig {
    pub fn from_env(env: &Env, service: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: env.string("NATS_URL", "nats://127.0.0.1:4222"),
            creds_file: env.get("NATS_CREDS_FILE"),
            name: env.string("NATS_NAME", &format!("khoros-kore-bridge-{service}")),
        })
    }

    /// The servers of `url`, one per comma-separated entry, trimmed. async-nats parses a
    /// string as one URL (`a,b` fails with "invalid port number"), so a cluster's list is split
    /// here and handed over as a slice.
    pub fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn secret_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let env = Env::from_pairs([("PW", "inline"), ("PW_FILE", path.to_str().unwrap())]);
        assert_eq!(env.secret("PW").unwrap().unwrap().expose(), "from-file");
        assert_eq!(
            format!("{:?}", env.secret("PW").unwrap()),
            "Some(Secret(***))"
        );
    }

    #[test]
    fn invalid_numbers_name_the_variable() {
        let env = Env::from_pairs([("N", "many")]);
        let err = env.parse::<u32>("N", 1).unwrap_err().to_string();
        assert!(err.contains("N") && err.contains("many"), "{err}");
    }

    #[test]
    fn a_comma_separated_nats_url_is_a_server_list() {
        let env = Env::from_pairs([(
            "NATS_URL",
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://127.0.0.1:4224",
        )]);
        let config = NatsConfig::from_env(&env, "test").unwrap();
        assert_eq!(
            config.servers(),
            [
                "nats://127.0.0.1:4222",
                "nats://127.0.0.1:4223",
                "nats://127.0.0.1:4224"
            ]
        );
        for server in config.servers() {
            server
                .parse::<async_nats::ServerAddr>()
                .expect("each entry is a server address");
        }
        let single = NatsConfig::from_env(&Env::from_pairs([("NATS_URL", "nats://h:1")]), "t");
        assert_eq!(single.unwrap().servers(), ["nats://h:1"]);
    }
}
