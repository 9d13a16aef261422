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
/// Table of named lists (one item per list and value).
pub const ENV_LISTS_TABLE: &str = "LISTS_TABLE";
/// Optional: seconds the lists are cached, 1 to 3600 (default 60): a list change takes
/// effect within this long.
pub const ENV_LISTS_TTL_SECONDS: &str = "LISTS_TTL_SECONDS";

/// Lists cache TTL when [`ENV_LISTS_TTL_SECONDS`] is unset.
pub const DEFAULT_LISTS_TTL: Duration = Duration::from_secs(60);
/// Longest lists cache TTL, seconds (the template's `ListsTtlSeconds` allows the same).
pub const MAX_LISTS_TTL_SECONDS: u32 = 3600;

/// Variables the function must be given.
pub const REQUIRED_ENV: &[&str] = &[
    ENV_PROFILES_TABLE,
    ENV_ALERTS_TABLE,
    ENV_CONFIG_TABLE,
    ENV_LISTS_TABLE,
    ENV_QUARANTINE_QUEUE_URL,
];
/// Variables the function reads when present.
pub const OPTIONAL_ENV: &[&str] = &[
    ENV_ALERTS_STREAM,
    ENV_ALERT_THRESHOLD,
    ENV_RULES_TTL_SECONDS,
    ENV_LISTS_TTL_SECONDS,
];

/// Every AWS action the function's code makes, with the variable naming the resource it
/// acts on (the template consistency test checks the function's role grants each one).
pub const IAM_ACTIONS: &[(&str, &str)] = &[
    ("dynamodb:BatchGetItem", ENV_PROFILES_TABLE),
    ("dynamodb:GetItem", ENV_PROFILES_TABLE),
    ("dynamodb:PutItem", ENV_PROFILES_TABLE),
    ("dynamodb:BatchWriteItem", ENV_ALERTS_TABLE),
    ("dynamodb:GetItem", ENV_CONFIG_TABLE),
    ("dynamodb:Query", ENV_LISTS_TABLE),
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
    /// Lists table name.
    pub lists_table: String,
    /// Lists cache TTL (1 s to 1 h).
    pub lists_ttl: Duration,
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
        let lists_ttl = |v: Option<String>| match v {
            None => Ok(DEFAULT_LISTS_TTL),
            Some(v) => {
                let secs = parse(ENV_LISTS_TTL_SECONDS, v.clone())?;
                if (1..=MAX_LISTS_TTL_SECONDS).contains(&secs) {
                    Ok(Duration::from_secs(u64::from(secs)))
                } else {
                    Err(ConfigError::Invalid {
                        name: ENV_LISTS_TTL_SECONDS,
                        value: v,
                        why: format!("must be 1 to {MAX_LISTS_TTL_SECONDS} seconds"),
                    })
                }
            }
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
            lists_table: req(ENV_LISTS_TABLE)?,
            lists_ttl: lists_ttl(opt(ENV_LISTS_TTL_SECONDS))?,
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
            ENV_RULES_TTL_SECONDS | ENV_LISTS_TTL_SECONDS => None,
            _ => Some(format!("v-{k}")),
        })
        .unwrap();
        assert_eq!(c.alert_threshold, Some(700));
        assert_eq!(c.alerts_stream, None);
        assert_eq!(c.profiles_table, "v-PROFILES_TABLE");
        assert_eq!(c.lists_table, "v-LISTS_TABLE");
    }

    fn with_lists_ttl(ttl: Option<&str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| match k {
            ENV_LISTS_TTL_SECONDS => ttl.map(str::to_owned),
            ENV_ALERT_THRESHOLD | ENV_ALERTS_STREAM | ENV_RULES_TTL_SECONDS => None,
            _ => Some(format!("v-{k}")),
        })
    }

    #[test]
    fn lists_ttl_defaults_to_a_minute_and_is_bounded() {
        assert_eq!(with_lists_ttl(None).unwrap().lists_ttl, DEFAULT_LISTS_TTL);
        assert_eq!(
            with_lists_ttl(Some("")).unwrap().lists_ttl,
            DEFAULT_LISTS_TTL
        );
        assert_eq!(
            with_lists_ttl(Some("1")).unwrap().lists_ttl,
            Duration::from_secs(1)
        );
        assert_eq!(
            with_lists_ttl(Some("3600")).unwrap().lists_ttl,
            Duration::from_secs(3600)
        );
        for bad in ["0", "3601", "-1", "soon"] {
            let err = with_lists_ttl(Some(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        name: ENV_LISTS_TTL_SECONDS,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("LISTS_TTL_SECONDS"), "{err}");
        }
    }

    #[test]
    fn the_lists_table_is_required() {
        let err = Config::from_lookup(|k| {
            (k != ENV_LISTS_TABLE && REQUIRED_ENV.contains(&k)).then(|| format!("v-{k}"))
        })
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Missing(ENV_LISTS_TABLE)),
            "{err}"
        );
        assert!(REQUIRED_ENV.contains(&ENV_LISTS_TABLE));
        assert!(IAM_ACTIONS.contains(&("dynamodb:Query", ENV_LISTS_TABLE)));
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
