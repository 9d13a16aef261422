//! Configuration from the environment, read once at cold start. The names are constants
//! so the template consistency test can check the template sets every one.

use std::time::Duration;

/// Table of card profiles.
pub const ENV_PROFILES_TABLE: &str = "PROFILES_TABLE";
/// Table of alerts.
pub const ENV_ALERTS_TABLE: &str = "ALERTS_TABLE";
/// Table holding the rule set item.
pub const ENV_CONFIG_TABLE: &str = "CONFIG_TABLE";
/// SQS queue URL of the quarantine.
pub const ENV_QUARANTINE_QUEUE_URL: &str = "QUARANTINE_QUEUE_URL";
/// Optional: Kinesis stream name for alerts ("" or unset: none).
pub const ENV_ALERTS_STREAM: &str = "ALERTS_STREAM";
/// Optional: alert threshold overriding the rule set's.
pub const ENV_ALERT_THRESHOLD: &str = "ALERT_THRESHOLD";
/// Optional: seconds a rule set is cached (default 60).
pub const ENV_RULES_TTL_SECONDS: &str = "RULES_TTL_SECONDS";

/// Variables the function must be given.
pub const REQUIRED_ENV: &[&str] = &[
    ENV_PROFILES_TABLE,
    ENV_ALERTS_TABLE,
    ENV_CONFIG_TABLE,
    ENV_QUARANTINE_QUEUE_URL,
];
/// Variables the function reads when present.
pub const OPTIONAL_ENV: &[&str] = &[
    ENV_ALERTS_STREAM,
    ENV_ALERT_THRESHOLD,
    ENV_RULES_TTL_SECONDS,
];

/// Every AWS action the function's code makes, with the variable naming the resource it
/// acts on (the template consistency test checks the function's role grants each one).
pub const IAM_ACTIONS: &[(&str, &str)] = &[
    ("dynamodb:BatchGetItem", ENV_PROFILES_TABLE),
    ("dynamodb:GetItem", ENV_PROFILES_TABLE),
    ("dynamodb:PutItem", ENV_PROFILES_TABLE),
    ("dynamodb:BatchWriteItem", ENV_ALERTS_TABLE),
    ("dynamodb:GetItem", ENV_CONFIG_TABLE),
    ("sqs:SendMessage", ENV_QUARANTINE_QUEUE_URL),
];

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable does not parse.
    #[error("environment variable {name} = {value:?} is invalid: {why}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        why: String,
    },
}

/// The scorer's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Profiles table name.
    pub profiles_table: String,
    /// Alerts table name.
    pub alerts_table: String,
    /// Config table name.
    pub config_table: String,
    /// Quarantine queue URL.
    pub quarantine_queue_url: String,
    /// Alert output stream, if any.
    pub alerts_stream: Option<String>,
    /// Threshold override.
    pub alert_threshold: Option<u32>,
    /// Rule cache TTL.
    pub rules_ttl: Duration,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let req = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let opt = |name: &'static str| get(name).filter(|v| !v.is_empty());
        let parse = |name: &'static str, v: String| {
            v.parse::<u32>().map_err(|e| ConfigError::Invalid {
                name,
                value: v.clone(),
                why: e.to_string(),
            })
        };
        Ok(Self {
            profiles_table: req(ENV_PROFILES_TABLE)?,
            alerts_table: req(ENV_ALERTS_TABLE)?,
            config_table: req(ENV_CONFIG_TABLE)?,
            quarantine_queue_url: req(ENV_QUARANTINE_QUEUE_URL)?,
            alerts_stream: opt(ENV_ALERTS_STREAM),
            alert_threshold: opt(ENV_ALERT_THRESHOLD)
                .map(|v| parse(ENV_ALERT_THRESHOLD, v))
                .transpose()?,
            rules_ttl: Duration::from_secs(u64::from(
                opt(ENV_RULES_TTL_SECONDS)
                    .map(|v| parse(ENV_RULES_TTL_SECONDS, v))
                    .transpose()?
                    .unwrap_or(60),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variable_names_itself() {
        let err = Config::from_lookup(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable PROFILES_TABLE is not set"
        );
    }

    #[test]
    fn reads_required_and_optional() {
        let c = Config::from_lookup(|k| match k {
            ENV_ALERT_THRESHOLD => Some("700".into()),
            ENV_ALERTS_STREAM => Some(String::new()),
            ENV_RULES_TTL_SECONDS => None,
            _ => Some(format!("v-{k}")),
        })
        .unwrap();
        assert_eq!(c.alert_threshold, Some(700));
        assert_eq!(c.alerts_stream, None);
        assert_eq!(c.profiles_table, "v-PROFILES_TABLE");
    }

    #[test]
    fn bad_number_is_reported() {
        let err = Config::from_lookup(|k| {
            if k == ENV_ALERT_THRESHOLD {
                Some("high".into())
            } else {
                Some("x".into())
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("ALERT_THRESHOLD"));
    }
}
