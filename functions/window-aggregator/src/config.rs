//! Configuration from the environment, read once at cold start. The names are constants
//! so the template consistency test can check the template sets every one.

/// Table of window partials and shard progress.
pub const ENV_WINDOWS_TABLE: &str = "WINDOWS_TABLE";
/// Table of alerts.
pub const ENV_ALERTS_TABLE: &str = "ALERTS_TABLE";
/// SQS queue URL of the quarantine (poison and late records).
pub const ENV_QUARANTINE_QUEUE_URL: &str = "QUARANTINE_QUEUE_URL";
/// Optional: the input stream's name, for its shards' lineage (unset: a child shard
/// after a reshard does not see its parents' event-id claims).
pub const ENV_INPUT_STREAM: &str = "INPUT_STREAM";
/// Optional: allowed lateness in seconds (default 120).
pub const ENV_ALLOWED_LATENESS_SECONDS: &str = "ALLOWED_LATENESS_SECONDS";

/// Optional: per-card window widths in minutes, comma-separated ("" or unset: none).
pub const ENV_CARD_WINDOW_MINUTES: &str = "CARD_WINDOW_MINUTES";

/// Variables the function must be given.
pub const REQUIRED_ENV: &[&str] = &[
    ENV_WINDOWS_TABLE,
    ENV_ALERTS_TABLE,
    ENV_QUARANTINE_QUEUE_URL,
];
/// Variables the function reads when present.
pub const OPTIONAL_ENV: &[&str] = &[
    ENV_INPUT_STREAM,
    ENV_ALLOWED_LATENESS_SECONDS,
    ENV_CARD_WINDOW_MINUTES,
];

/// Every AWS action the function's code makes, with the variable naming the resource it
/// acts on (the template consistency test checks the function's role grants each one).
pub const IAM_ACTIONS: &[(&str, &str)] = &[
    ("dynamodb:BatchGetItem", ENV_WINDOWS_TABLE),
    ("dynamodb:BatchWriteItem", ENV_WINDOWS_TABLE),
    ("dynamodb:GetItem", ENV_WINDOWS_TABLE),
    ("dynamodb:PutItem", ENV_WINDOWS_TABLE),
    ("dynamodb:Query", ENV_WINDOWS_TABLE),
    ("dynamodb:BatchWriteItem", ENV_ALERTS_TABLE),
    ("sqs:SendMessage", ENV_QUARANTINE_QUEUE_URL),
    ("kinesis:ListShards", ENV_INPUT_STREAM),
];

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable does not parse.
    #[error(
        "environment variable {name} = {value:?} is not a whole number (of seconds, or of minutes for windows)"
    )]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

/// The aggregator's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Windows table name.
    pub windows_table: String,
    /// Alerts table name.
    pub alerts_table: String,
    /// Quarantine queue URL.
    pub quarantine_queue_url: String,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// Per-card window widths, ms (empty: no per-card windows).
    pub card_widths_ms: Vec<i64>,
    /// The input stream, for shard lineage.
    pub input_stream: Option<String>,
}

impl Config {
    /// Applies the configuration to aggregator settings.
    pub fn apply(&self, settings: &mut crate::AggregatorSettings) {
        settings.windows.lateness_ms = self.lateness_ms;
        settings.windows.widths.insert(
            shardline_core::window::KeyKind::Card,
            self.card_widths_ms.clone(),
        );
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let req = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let lateness_ms = match get(ENV_ALLOWED_LATENESS_SECONDS).filter(|v| !v.is_empty()) {
            None => 120_000,
            Some(v) => {
                v.parse::<i64>().map_err(|_| ConfigError::Invalid {
                    name: ENV_ALLOWED_LATENESS_SECONDS,
                    value: v.clone(),
                })? * 1000
            }
        };
        let card_widths_ms = match get(ENV_CARD_WINDOW_MINUTES) {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.parse::<i64>()
                        .map(|m| m * 60_000)
                        .map_err(|_| ConfigError::Invalid {
                            name: ENV_CARD_WINDOW_MINUTES,
                            value: v.clone(),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            card_widths_ms,
            input_stream: get(ENV_INPUT_STREAM).filter(|v| !v.is_empty()),
            windows_table: req(ENV_WINDOWS_TABLE)?,
            alerts_table: req(ENV_ALERTS_TABLE)?,
            quarantine_queue_url: req(ENV_QUARANTINE_QUEUE_URL)?,
            lateness_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variable_names_itself() {
        assert_eq!(
            Config::from_lookup(|_| None).unwrap_err().to_string(),
            "environment variable WINDOWS_TABLE is not set"
        );
    }

    #[test]
    fn card_windows_are_off_unless_configured() {
        let c = Config::from_lookup(|k| (k != ENV_CARD_WINDOW_MINUTES).then(|| "1".to_owned()))
            .unwrap();
        assert!(c.card_widths_ms.is_empty());
        let c = Config::from_lookup(|k| {
            Some(if k == ENV_CARD_WINDOW_MINUTES {
                "15, 60".into()
            } else {
                "1".into()
            })
        })
        .unwrap();
        assert_eq!(c.card_widths_ms, vec![900_000, 3_600_000]);
    }

    #[test]
    fn lateness_defaults_to_two_minutes_and_parses() {
        let c = Config::from_lookup(|k| {
            (k != ENV_ALLOWED_LATENESS_SECONDS && k != ENV_CARD_WINDOW_MINUTES)
                .then(|| "x".to_owned())
        })
        .unwrap();
        assert_eq!(c.lateness_ms, 120_000);
        let c = Config::from_lookup(|k| {
            Some(match k {
                ENV_ALLOWED_LATENESS_SECONDS => "30".into(),
                ENV_CARD_WINDOW_MINUTES => String::new(),
                _ => "x".into(),
            })
        })
        .unwrap();
        assert_eq!(c.lateness_ms, 30_000);
    }
}
