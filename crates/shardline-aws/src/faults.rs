//! Fault injection in the real SDK clients, for soak tests against the emulators: a
//! wrapper around the SDK's own HTTP client that, by a seeded generator and per-service
//! rates, answers a DynamoDB, SQS or Kinesis request with a throttling error, a 5xx, a
//! timeout, or sends it and then loses the response.
//!
//! It is enabled only by configuration: the `SHARDLINE_FAULTS` variable (read by
//! [`crate::sdk::load_sdk_config`]) or a [`FaultInjector`] applied to an `SdkConfig` in
//! code. When neither is used there is no wrapper at all. `template.yaml` never sets the
//! variable; a function that has it logs a warning at cold start.
//!
//! The faults sit below the SDK's orchestrator, where a real network's would, so the
//! SDK deserialises, classifies and retries them exactly as it does real ones
//! (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html>), and
//! [`crate::sdk::classify`] sees every kind as transient.
//!
//! # `SHARDLINE_FAULTS`
//!
//! A comma-separated list of `key=value` items; later items override earlier ones:
//!
//! ```text
//! seed=7,dynamodb.throttle=0.02,dynamodb.5xx=0.01,dynamodb.timeout=0.01,dynamodb.lost_response=0.02,sqs.throttle=0.02,kinesis.5xx=0.01
//! ```
//!
//! - `seed=<u64>`: the generator's seed (default 1). The n-th request to a service gets
//!   the same verdict for the same seed, whatever the other services do.
//! - `<service>.<kind>=<rate>`: the probability in `0..=1` that a request to `service`
//!   (`dynamodb`, `sqs`, `kinesis`, or `all` for the three) gets a fault of `kind`
//!   (`throttle`, `5xx`, `timeout`, `lost_response`). A service's rates may add up to 1
//!   at most; an unset rate is 0.
//! - `timeout_ms=<u64>`: how long a `timeout` fault hangs before failing (default 1000).
//!
//! An empty value means no faults. Anything else (unknown key or kind, a rate outside
//! `0..=1` or not a number, rates adding up past 1) is a [`FaultConfigError`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::config_bag::ConfigBag;

/// The variable that turns fault injection on (see the module documentation).
pub const FAULTS_ENV: &str = "SHARDLINE_FAULTS";

/// How long a `timeout` fault hangs when `timeout_ms` is not given.
pub const DEFAULT_TIMEOUT_DELAY: Duration = Duration::from_millis(1000);

/// The seed when `seed` is not given.
pub const DEFAULT_SEED: u64 = 1;

/// A service whose requests can get faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Amazon DynamoDB (`x-amz-target: DynamoDB_20120810.*`).
    DynamoDb,
    /// Amazon SQS, JSON protocol (`x-amz-target: AmazonSQS.*`).
    Sqs,
    /// Amazon Kinesis Data Streams (`x-amz-target: Kinesis_20131202.*`).
    Kinesis,
}

impl Service {
    /// Every service, in counter order.
    pub const ALL: [Service; 3] = [Service::DynamoDb, Service::Sqs, Service::Kinesis];

    /// The name used in `SHARDLINE_FAULTS` and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::DynamoDb => "dynamodb",
            Service::Sqs => "sqs",
            Service::Kinesis => "kinesis",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Each service draws from its own stream, so one service's traffic never shifts
    /// another's faults.
    fn salt(self) -> u64 {
        match self {
            Service::DynamoDb => 0x6479_6e61_6d6f_6462,
            Service::Sqs => 0x0073_7173_0073_7173,
            Service::Kinesis => 0x6b69_6e65_7369_7300,
        }
    }

    fn from_signing_name(name: &str) -> Option<Self> {
        match name {
            "dynamodb" => Some(Service::DynamoDb),
            "sqs" => Some(Service::Sqs),
            "kinesis" => Some(Service::Kinesis),
            _ => None,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Not sent; answered with HTTP 400 and the service's throttling error code.
    Throttle,
    /// Not sent; answered with HTTP 500 or 503 and the service's matching error code.
    ServerError,
    /// Not sent; hangs for the configured delay, then fails with a connector timeout
    /// (or the SDK's attempt timeout fires first, if it is shorter).
    Timeout,
    /// Sent, so a write lands; the response is read and dropped and the caller gets a
    /// connection-reset I/O error instead: the ambiguous outcome.
    LostResponse,
}

impl FaultKind {
    /// Every kind, in counter order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Throttle,
        FaultKind::ServerError,
        FaultKind::Timeout,
        FaultKind::LostResponse,
    ];

    /// The name used in `SHARDLINE_FAULTS` and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::ServerError => "5xx",
            FaultKind::Timeout => "timeout",
            FaultKind::LostResponse => "lost_response",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == key)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `SHARDLINE_FAULTS` value (or a plan built in code) that cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    /// An item without `=`.
    #[error("{FAULTS_ENV}: `{item}` is not `key=value`")]
    Malformed {
        /// The item as written.
        item: String,
    },
    /// A key that is not `seed`, `timeout_ms` or `<service>.<kind>`.
    #[error(
        "{FAULTS_ENV}: unknown key `{key}`: expected seed, timeout_ms or <service>.<kind> with service one of dynamodb, sqs, kinesis, all and kind one of throttle, 5xx, timeout, lost_response"
    )]
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// `seed` or `timeout_ms` that is not an unsigned integer.
    #[error("{FAULTS_ENV}: `{key}={value}`: expected an unsigned integer")]
    NotAnInteger {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A rate that is not a number in `0..=1`.
    #[error("{FAULTS_ENV}: `{key}={value}`: a rate is a number from 0 to 1")]
    BadRate {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A service whose rates add up to more than 1.
    #[error("{FAULTS_ENV}: the rates for {service} add up to {sum}, more than 1")]
    RatesExceedOne {
        /// The service.
        service: Service,
        /// The sum of its rates.
        sum: f64,
    },
    /// The variable is set but not valid Unicode.
    #[error("{FAULTS_ENV} is not valid Unicode")]
    NotUnicode,
}

/// Which faults to inject, how often, and from which seed.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    timeout_delay: Duration,
    /// `rates[service][kind]`.
    rates: [[f64; 4]; 3],
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::new(DEFAULT_SEED)
    }
}

impl FaultPlan {
    /// A plan with no faults yet, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            timeout_delay: DEFAULT_TIMEOUT_DELAY,
            rates: [[0.0; 4]; 3],
        }
    }

    /// Reads `SHARDLINE_FAULTS`: `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, FaultConfigError> {
        match std::env::var(FAULTS_ENV) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => v.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(FaultConfigError::NotUnicode),
        }
    }

    /// Sets the rate of one kind of fault for one service.
    pub fn with_rate(
        mut self,
        service: Service,
        kind: FaultKind,
        rate: f64,
    ) -> Result<Self, FaultConfigError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(FaultConfigError::BadRate {
                key: format!("{service}.{kind}"),
                value: rate.to_string(),
            });
        }
        self.rates[service.index()][kind.index()] = rate;
        self.check_sum(service)?;
        Ok(self)
    }

    /// Sets how long a `timeout` fault hangs before it fails.
    pub fn with_timeout_delay(mut self, delay: Duration) -> Self {
        self.timeout_delay = delay;
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How long a `timeout` fault hangs.
    pub fn timeout_delay(&self) -> Duration {
        self.timeout_delay
    }

    /// The rate of `kind` for `service`.
    pub fn rate(&self, service: Service, kind: FaultKind) -> f64 {
        self.rates[service.index()][kind.index()]
    }

    /// True when no rate is above zero.
    pub fn is_empty(&self) -> bool {
        self.rates.iter().flatten().all(|r| *r == 0.0)
    }

    /// The verdict for the `n`-th request (from 0) to `service`: a pure function of the
    /// seed, the service and `n`.
    pub fn decide(&self, service: Service, n: u64) -> Option<Fault> {
        let x = draw(self.seed, service, n);
        // The top 53 bits as a uniform number in [0, 1).
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut upper = 0.0;
        for kind in FaultKind::ALL {
            upper += self.rate(service, kind);
            if u < upper {
                // A low bit, independent of the ones that chose the kind, picks the
                // status of a server error.
                let status = match kind {
                    FaultKind::Throttle => 400,
                    FaultKind::ServerError if x & 0b100 == 0 => 500,
                    FaultKind::ServerError => 503,
                    FaultKind::Timeout | FaultKind::LostResponse => 0,
                };
                return Some(Fault { kind, status });
            }
        }
        None
    }

    fn check_sum(&self, service: Service) -> Result<(), FaultConfigError> {
        let sum: f64 = self.rates[service.index()].iter().sum();
        // Tolerate the rounding of decimal rates such as 0.1 + 0.2 + 0.7.
        if sum > 1.0 + 1e-9 {
            return Err(FaultConfigError::RatesExceedOne { service, sum });
        }
        Ok(())
    }
}

impl FromStr for FaultPlan {
    type Err = FaultConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut plan = FaultPlan::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| FaultConfigError::Malformed { item: item.into() })?;
            let integer = || {
                value
                    .parse::<u64>()
                    .map_err(|_| FaultConfigError::NotAnInteger {
                        key: key.into(),
                        value: value.into(),
                    })
            };
            match key {
                "seed" => plan.seed = integer()?,
                "timeout_ms" => plan.timeout_delay = Duration::from_millis(integer()?),
                _ => {
                    let unknown = || FaultConfigError::UnknownKey { key: key.into() };
                    let (target, kind) = key.split_once('.').ok_or_else(unknown)?;
                    let kind = FaultKind::from_key(kind).ok_or_else(unknown)?;
                    let services: &[Service] = match target {
                        "all" => &Service::ALL,
                        name => &[Service::from_signing_name(name).ok_or_else(unknown)?],
                    };
                    let rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| FaultConfigError::BadRate {
                            key: key.into(),
                            value: value.into(),
                        })?;
                    for service in services {
                        plan.rates[service.index()][kind.index()] = rate;
                    }
                }
            }
        }
        for service in Service::ALL {
            plan.check_sum(service)?;
        }
        Ok(plan)
    }
}

/// One verdict of [`FaultPlan::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens to the request.
    pub kind: FaultKind,
    /// The synthetic response's HTTP status (400 for a throttle, 500 or 503 for a server
    /// error, 0 when there is no synthetic response).
    pub status: u16,
}

/// SplitMix64's output function
/// (<https://prng.di.unimi.it/splitmix64.c>): a counter-based generator, so the
/// n-th draw needs no shared state beyond `n`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw(seed: u64, service: Service, n: u64) -> u64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let base = mix((seed ^ service.salt()).wrapping_add(GAMMA));
    mix(base.wrapping_add(n.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Requests seen and faults injected, by service and kind.
#[derive(Debug)]
struct Counters {
    requests: [AtomicU64; 3],
    injected: [[AtomicU64; 4]; 3],
}

impl Counters {
    const fn new() -> Self {
        Self {
            requests: [const { AtomicU64::new(0) }; 3],
            injected: [const { [const { AtomicU64::new(0) }; 4] }; 3],
        }
    }

    fn snapshot(&self) -> FaultCounts {
        FaultCounts {
            requests: std::array::from_fn(|s| self.requests[s].load(Ordering::Relaxed)),
            injected: std::array::from_fn(|s| {
                std::array::from_fn(|k| self.injected[s][k].load(Ordering::Relaxed))
            }),
        }
    }
}

/// Every injector in the process adds to these as well as to its own.
static PROCESS: Counters = Counters::new();

/// Faults injected (and requests seen) by every injector in this process: what a soak
/// command prints at the end.
pub fn counts() -> FaultCounts {
    PROCESS.snapshot()
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    requests: [u64; 3],
    injected: [[u64; 4]; 3],
}

impl FaultCounts {
    /// Requests to `service` that went through an injector (attempts, so SDK retries
    /// count one each).
    pub fn requests(&self, service: Service) -> u64 {
        self.requests[service.index()]
    }

    /// Faults of `kind` injected into requests to `service`.
    pub fn injected(&self, service: Service, kind: FaultKind) -> u64 {
        self.injected[service.index()][kind.index()]
    }

    /// All faults injected.
    pub fn total(&self) -> u64 {
        self.injected.iter().flatten().sum()
    }

    /// Every (service, kind, count), zeros included, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (Service, FaultKind, u64)> + '_ {
        Service::ALL.into_iter().flat_map(move |s| {
            FaultKind::ALL
                .into_iter()
                .map(move |k| (s, k, self.injected(s, k)))
        })
    }

    /// The counts accumulated since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &FaultCounts) -> FaultCounts {
        FaultCounts {
            requests: std::array::from_fn(|s| self.requests[s].saturating_sub(earlier.requests[s])),
            injected: std::array::from_fn(|s| {
                std::array::from_fn(|k| self.injected[s][k].saturating_sub(earlier.injected[s][k]))
            }),
        }
    }
}

/// One line per service: `dynamodb: 1200 requests, throttle 24, 5xx 11, timeout 12,
/// lost_response 25`.
impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, service) in Service::ALL.into_iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{service}: {} requests", self.requests(service))?;
            for kind in FaultKind::ALL {
                write!(f, ", {kind} {}", self.injected(service, kind))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct InjectorState {
    plan: FaultPlan,
    counters: Counters,
}

/// A fault plan with its own counters, to wrap SDK HTTP clients with. Cheap to clone;
/// clones share the counters and the sequence of draws, so every client wrapped by one
/// injector draws from one stream per service.
#[derive(Clone, Debug)]
pub struct FaultInjector(Arc<InjectorState>);

impl FaultInjector {
    /// An injector for `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        Self(Arc::new(InjectorState {
            plan,
            counters: Counters::new(),
        }))
    }

    /// The process's injector from `SHARDLINE_FAULTS`, read once: `Ok(None)` when the
    /// variable is unset or empty. Every call returns the same injector (one stream of
    /// draws and one set of counters however many clients are built).
    pub fn from_env() -> Result<Option<Self>, FaultConfigError> {
        static FROM_ENV: OnceLock<Result<Option<FaultInjector>, FaultConfigError>> =
            OnceLock::new();
        FROM_ENV
            .get_or_init(|| FaultPlan::from_env().map(|p| p.map(FaultInjector::new)))
            .clone()
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.0.plan
    }

    /// This injector's counters (the process-wide ones are [`counts`]).
    pub fn counts(&self) -> FaultCounts {
        self.0.counters.snapshot()
    }

    /// `sdk` with its HTTP client (or the SDK's default one) wrapped: every client built
    /// from the result (`aws_sdk_dynamodb::Client::new(&sdk)`...) injects faults.
    /// Credential providers already loaded into `sdk` keep their own client.
    pub fn apply(&self, sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
        let inner = sdk.http_client().unwrap_or_else(default_http_client);
        sdk.to_builder().http_client(self.wrap(inner)).build()
    }

    /// `inner` wrapped, for a service `Config` builder's `http_client`.
    pub fn wrap(&self, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(FaultyHttpClient {
            inner,
            injector: self.clone(),
        })
    }

    /// The SDK's default HTTPS client, wrapped.
    pub fn http_client(&self) -> SharedHttpClient {
        self.wrap(default_http_client())
    }

    /// The next verdict for a request to `service`, counted.
    fn next(&self, service: Service) -> Option<Fault> {
        let n = self.0.counters.requests[service.index()].fetch_add(1, Ordering::Relaxed);
        PROCESS.requests[service.index()].fetch_add(1, Ordering::Relaxed);
        self.0.plan.decide(service, n)
    }

    fn record(&self, service: Service, kind: FaultKind) {
        let (s, k) = (service.index(), kind.index());
        self.0.counters.injected[s][k].fetch_add(1, Ordering::Relaxed);
        PROCESS.injected[s][k].fetch_add(1, Ordering::Relaxed);
    }
}

/// The HTTP client the SDK would use without one configured: the default runtime
/// plugin's, so the wrapped client is the same one (TLS, proxy, timeouts) as in
/// production.
fn default_http_client() -> SharedHttpClient {
    aws_smithy_runtime::client::defaults::default_http_client_plugin_v2(BehaviorVersion::latest())
        .and_then(|plugin| {
            plugin
                .runtime_components(&RuntimeComponentsBuilder::new("shardline-faults"))
                .http_client()
        })
        // Only reachable if the SDK crates were built without `default-https-client`,
        // which the workspace always enables.
        .unwrap_or_else(|| {
            panic!("fault injection needs the SDK's default HTTPS client (`default-https-client`)")
        })
}

#[derive(Debug)]
struct FaultyHttpClient {
    inner: SharedHttpClient,
    injector: FaultInjector,
}

impl HttpClient for FaultyHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            injector: self.injector.clone(),
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    injector: FaultInjector,
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let Some((service, operation)) = identify(&request) else {
            return self.inner.call(request);
        };
        let Some(fault) = self.injector.next(service) else {
            return self.inner.call(request);
        };
        tracing::debug!(
            service = service.as_str(),
            operation = %operation,
            fault = fault.kind.as_str(),
            "Injected fault."
        );
        match fault.kind {
            FaultKind::Throttle | FaultKind::ServerError => {
                self.injector.record(service, fault.kind);
                HttpConnectorFuture::ready(Ok(error_response(service, &operation, fault)))
            }
            FaultKind::Timeout => {
                self.injector.record(service, fault.kind);
                let delay = self.injector.plan().timeout_delay();
                HttpConnectorFuture::new(async move {
                    tokio::time::sleep(delay).await;
                    Err(ConnectorError::timeout(
                        format!("injected fault: no response within {delay:?}").into(),
                    ))
                })
            }
            FaultKind::LostResponse => {
                let sent = self.inner.call(request);
                let injector = self.injector.clone();
                HttpConnectorFuture::new(async move {
                    // A real failure on the way there stays what it is; only a request
                    // the server answered can lose its answer.
                    let response = sent.await?;
                    let status = response.status().as_u16();
                    // Read the whole answer, so the server has finished with the request
                    // and the connection is not cut mid-body.
                    let _ = ByteStream::new(response.into_body()).collect().await;
                    injector.record(service, FaultKind::LostResponse);
                    Err(ConnectorError::io(
                        format!(
                            "injected fault: connection reset after the request was sent (the server answered {status})"
                        )
                        .into(),
                    ))
                })
            }
        }
    }
}

/// The service and operation of a request: from `x-amz-target` (the JSON protocols of
/// all three services), else from the SigV4 credential scope. Neither depends on the
/// endpoint, so emulators on any host and port and AWS's own endpoints match alike.
fn identify(request: &HttpRequest) -> Option<(Service, String)> {
    if let Some(target) = request.headers().get("x-amz-target") {
        let (prefix, operation) = target.split_once('.')?;
        let service = match prefix {
            "DynamoDB_20120810" => Service::DynamoDb,
            "AmazonSQS" => Service::Sqs,
            "Kinesis_20131202" => Service::Kinesis,
            _ => return None,
        };
        return Some((service, operation.to_string()));
    }
    // `AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/sqs/aws4_request, ...`
    let auth = request.headers().get("authorization")?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    let service = scope.split('/').nth(3)?;
    Some((Service::from_signing_name(service)?, String::new()))
}

/// The error response the service itself sends for `fault`, in its protocol, with the
/// error codes its SDK classifies as throttling or server errors.
/// DynamoDB: <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>;
/// Kinesis: <https://docs.aws.amazon.com/kinesis/latest/APIReference/CommonErrors.html>;
/// SQS: <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/CommonErrors.html>.
fn error_response(service: Service, operation: &str, fault: Fault) -> HttpResponse {
    let code = match (fault.kind, service) {
        (FaultKind::Throttle, Service::DynamoDb) if is_data_plane(service, operation) => {
            "ProvisionedThroughputExceededException"
        }
        (FaultKind::Throttle, Service::DynamoDb) => "ThrottlingException",
        (FaultKind::Throttle, Service::Kinesis) if is_data_plane(service, operation) => {
            "ProvisionedThroughputExceededException"
        }
        (FaultKind::Throttle, Service::Kinesis) => "LimitExceededException",
        (FaultKind::Throttle, Service::Sqs) => "RequestThrottled",
        (_, _) if fault.status == 503 => "ServiceUnavailable",
        (_, Service::DynamoDb) => "InternalServerError",
        (_, _) => "InternalFailure",
    };
    let (type_name, content_type) = match service {
        Service::DynamoDb => (
            format!("com.amazonaws.dynamodb.v20120810#{code}"),
            "application/x-amz-json-1.0",
        ),
        Service::Sqs => (
            format!("com.amazonaws.sqs#{code}"),
            "application/x-amz-json-1.0",
        ),
        Service::Kinesis => (code.to_string(), "application/x-amz-json-1.1"),
    };
    let body = serde_json::json!({
        "__type": type_name,
        "message": format!("injected fault ({})", fault.kind),
    })
    .to_string();
    let status = StatusCode::try_from(fault.status).unwrap_or_else(|_| {
        unreachable!("fault statuses are 400, 500 and 503");
    });
    let mut response = HttpResponse::new(status, SdkBody::from(body));
    let headers = response.headers_mut();
    headers.insert("content-type", content_type);
    headers.insert("x-amzn-requestid", "shardline-injected-fault");
    if service == Service::Sqs {
        // SQS's JSON protocol is query-compatible: the SDK takes the code from here.
        let sender = if fault.kind == FaultKind::Throttle {
            "Sender"
        } else {
            "Receiver"
        };
        headers.insert("x-amzn-query-error", format!("{code};{sender}"));
    }
    response
}

/// Operations whose throttles are per-table or per-shard capacity errors rather than
/// control-plane rate limits.
fn is_data_plane(service: Service, operation: &str) -> bool {
    match service {
        Service::DynamoDb => matches!(
            operation,
            "GetItem"
                | "PutItem"
                | "UpdateItem"
                | "DeleteItem"
                | "Query"
                | "Scan"
                | "BatchGetItem"
                | "BatchWriteItem"
                | "TransactGetItems"
                | "TransactWriteItems"
        ),
        Service::Kinesis => matches!(operation, "PutRecord" | "PutRecords" | "GetRecords"),
        Service::Sqs => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use super::*;
    use crate::sdk::classify;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::error::SdkError;
    use aws_smithy_types::retry::RetryConfig;
    use aws_smithy_types::timeout::TimeoutConfig;
    use shardline_core::StoreError;

    #[test]
    fn parses_the_documented_example() {
        let plan: FaultPlan = "seed=7,dynamodb.throttle=0.02,dynamodb.5xx=0.01,dynamodb.timeout=0.01,dynamodb.lost_response=0.02,sqs.throttle=0.02,kinesis.5xx=0.01"
            .parse()
            .unwrap();
        assert_eq!(plan.seed(), 7);
        assert_eq!(plan.rate(Service::DynamoDb, FaultKind::Throttle), 0.02);
        assert_eq!(plan.rate(Service::DynamoDb, FaultKind::ServerError), 0.01);
        assert_eq!(plan.rate(Service::DynamoDb, FaultKind::Timeout), 0.01);
        assert_eq!(plan.rate(Service::DynamoDb, FaultKind::LostResponse), 0.02);
        assert_eq!(plan.rate(Service::Sqs, FaultKind::Throttle), 0.02);
        assert_eq!(plan.rate(Service::Sqs, FaultKind::ServerError), 0.0);
        assert_eq!(plan.rate(Service::Kinesis, FaultKind::ServerError), 0.01);
        assert_eq!(plan.timeout_delay(), DEFAULT_TIMEOUT_DELAY);
    }

    #[test]
    fn all_sets_every_service_and_later_items_override() {
        let plan: FaultPlan = " all.throttle=0.1 , kinesis.throttle=0.3,timeout_ms=20,"
            .parse()
            .unwrap();
        assert_eq!(plan.seed(), DEFAULT_SEED);
        assert_eq!(plan.rate(Service::DynamoDb, FaultKind::Throttle), 0.1);
        assert_eq!(plan.rate(Service::Sqs, FaultKind::Throttle), 0.1);
        assert_eq!(plan.rate(Service::Kinesis, FaultKind::Throttle), 0.3);
        assert_eq!(plan.timeout_delay(), Duration::from_millis(20));
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let err = |s: &str| s.parse::<FaultPlan>().unwrap_err();
        assert!(
            matches!(err("dynamo.throttle=0.1"), FaultConfigError::UnknownKey { key } if key == "dynamo.throttle")
        );
        assert!(matches!(
            err("dynamodb.slow=0.1"),
            FaultConfigError::UnknownKey { .. }
        ));
        assert!(matches!(
            err("rate=0.1"),
            FaultConfigError::UnknownKey { .. }
        ));
        assert!(matches!(
            err("dynamodb.throttle"),
            FaultConfigError::Malformed { .. }
        ));
        assert!(matches!(
            err("sqs.5xx=1.5"),
            FaultConfigError::BadRate { .. }
        ));
        assert!(matches!(
            err("sqs.5xx=-0.1"),
            FaultConfigError::BadRate { .. }
        ));
        assert!(matches!(
            err("sqs.5xx=NaN"),
            FaultConfigError::BadRate { .. }
        ));
        assert!(matches!(
            err("sqs.5xx=often"),
            FaultConfigError::BadRate { .. }
        ));
        assert!(matches!(
            err("seed=-1"),
            FaultConfigError::NotAnInteger { .. }
        ));
        assert!(matches!(
            err("kinesis.throttle=0.6,kinesis.timeout=0.5"),
            FaultConfigError::RatesExceedOne {
                service: Service::Kinesis,
                ..
            }
        ));
        let message = err("dynamodb.slow=0.1").to_string();
        assert!(message.starts_with("SHARDLINE_FAULTS: unknown key `dynamodb.slow`"));
        assert!(message.contains("lost_response"), "{message}");
    }

    #[test]
    fn rates_that_add_up_to_one_with_rounding_are_accepted() {
        let plan: FaultPlan = "sqs.throttle=0.1,sqs.5xx=0.2,sqs.lost_response=0.7"
            .parse()
            .unwrap();
        assert!(!plan.is_empty());
        assert!(FaultPlan::default().is_empty());
        assert!(
            FaultPlan::new(1)
                .with_rate(Service::Sqs, FaultKind::Throttle, 2.0)
                .is_err()
        );
    }

    #[test]
    fn decisions_are_a_function_of_seed_service_and_index() {
        let plan: FaultPlan =
            "seed=7,all.throttle=0.1,all.5xx=0.1,all.timeout=0.1,all.lost_response=0.1"
                .parse()
                .unwrap();
        let run = |p: &FaultPlan, s| (0..1000).map(|n| p.decide(s, n)).collect::<Vec<_>>();
        assert_eq!(run(&plan, Service::Sqs), run(&plan.clone(), Service::Sqs));
        assert_ne!(run(&plan, Service::Sqs), run(&plan, Service::Kinesis));
        let other_seed = FaultPlan {
            seed: 8,
            ..plan.clone()
        };
        assert_ne!(run(&plan, Service::Sqs), run(&other_seed, Service::Sqs));
    }

    #[test]
    fn frequencies_follow_the_rates() {
        let plan = FaultPlan::new(42)
            .with_rate(Service::DynamoDb, FaultKind::Throttle, 0.05)
            .unwrap()
            .with_rate(Service::DynamoDb, FaultKind::ServerError, 0.10)
            .unwrap()
            .with_rate(Service::DynamoDb, FaultKind::LostResponse, 0.20)
            .unwrap();
        let n = 100_000;
        let mut seen = [0u32; 4];
        let mut statuses = std::collections::BTreeMap::new();
        for i in 0..n {
            if let Some(f) = plan.decide(Service::DynamoDb, i) {
                seen[f.kind.index()] += 1;
                *statuses.entry(f.status).or_insert(0u32) += 1;
            }
            assert_eq!(plan.decide(Service::Sqs, i), None, "no rates for sqs");
        }
        let share = |k: FaultKind| f64::from(seen[k.index()]) / n as f64;
        assert!(
            (share(FaultKind::Throttle) - 0.05).abs() < 0.005,
            "{seen:?}"
        );
        assert!(
            (share(FaultKind::ServerError) - 0.10).abs() < 0.005,
            "{seen:?}"
        );
        assert_eq!(seen[FaultKind::Timeout.index()], 0);
        assert!(
            (share(FaultKind::LostResponse) - 0.20).abs() < 0.005,
            "{seen:?}"
        );
        // Server errors are split between 500 and 503.
        let (s500, s503) = (statuses[&500], statuses[&503]);
        assert!(s500 > 4000 && s503 > 4000, "{statuses:?}");
    }

    #[test]
    fn rate_one_always_and_rate_zero_never() {
        let always = FaultPlan::new(3)
            .with_rate(Service::Kinesis, FaultKind::Timeout, 1.0)
            .unwrap();
        assert!((0..10_000).all(|n| {
            always.decide(Service::Kinesis, n).map(|f| f.kind) == Some(FaultKind::Timeout)
        }));
        assert!((0..10_000).all(|n| always.decide(Service::DynamoDb, n).is_none()));
    }

    #[test]
    fn counts_display_one_line_per_service() {
        let mut c = FaultCounts::default();
        c.requests[0] = 10;
        c.injected[0][FaultKind::LostResponse.index()] = 2;
        assert_eq!(
            c.to_string(),
            "dynamodb: 10 requests, throttle 0, 5xx 0, timeout 0, lost_response 2\n\
             sqs: 0 requests, throttle 0, 5xx 0, timeout 0, lost_response 0\n\
             kinesis: 0 requests, throttle 0, 5xx 0, timeout 0, lost_response 0"
        );
        assert_eq!(c.total(), 2);
        assert_eq!(c.since(&c), FaultCounts::default());
    }

    /// The "network" for client tests: answers every request with 200 `{}` and counts
    /// what reached it.
    #[derive(Debug, Clone, Default)]
    struct Stub(Arc<AtomicU64>);

    impl Stub {
        fn sent(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl HttpConnector for Stub {
        fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
            self.0.fetch_add(1, Ordering::Relaxed);
            let mut response =
                HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from("{}"));
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.0");
            HttpConnectorFuture::ready(Ok(response))
        }
    }

    impl HttpClient for Stub {
        fn http_connector(
            &self,
            _settings: &HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            SharedHttpConnector::new(self.clone())
        }
    }

    fn ddb(injector: &FaultInjector, stub: &Stub, retry: RetryConfig) -> aws_sdk_dynamodb::Client {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "faults"))
            .endpoint_url("http://127.0.0.1:9")
            .http_client(injector.wrap(SharedHttpClient::new(stub.clone())))
            .retry_config(retry)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }

    fn only(service: Service, kind: FaultKind) -> FaultInjector {
        FaultInjector::new(
            FaultPlan::new(1)
                .with_rate(service, kind, 1.0)
                .unwrap()
                .with_timeout_delay(Duration::from_millis(10)),
        )
    }

    async fn put(client: &aws_sdk_dynamodb::Client) -> Result<(), StoreError> {
        client
            .put_item()
            .table_name("t")
            .item("pk", aws_sdk_dynamodb::types::AttributeValue::S("k".into()))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn raw_put(
        client: &aws_sdk_dynamodb::Client,
    ) -> Result<(), SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError, HttpResponse>>
    {
        client
            .put_item()
            .table_name("t")
            .item("pk", aws_sdk_dynamodb::types::AttributeValue::S("k".into()))
            .send()
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn throttle_is_a_provisioned_throughput_error_that_is_never_sent() {
        let (stub, injector) = (
            Stub::default(),
            only(Service::DynamoDb, FaultKind::Throttle),
        );
        let client = ddb(&injector, &stub, RetryConfig::disabled());
        let err = raw_put(&client).await.unwrap_err();
        let service_err = err.as_service_error().expect("a service error");
        assert!(
            service_err.is_provisioned_throughput_exceeded_exception(),
            "{err:?}"
        );
        assert!(matches!(classify(err), StoreError::Transient(_)));
        assert_eq!(stub.sent(), 0);
        assert_eq!(
            injector
                .counts()
                .injected(Service::DynamoDb, FaultKind::Throttle),
            1
        );
    }

    #[tokio::test]
    async fn server_errors_timeouts_and_lost_responses_classify_as_transient() {
        for kind in [
            FaultKind::ServerError,
            FaultKind::Timeout,
            FaultKind::LostResponse,
        ] {
            let (stub, injector) = (Stub::default(), only(Service::DynamoDb, kind));
            let client = ddb(&injector, &stub, RetryConfig::disabled());
            let err = put(&client).await.unwrap_err();
            assert!(matches!(err, StoreError::Transient(_)), "{kind}: {err:?}");
            let sent = u64::from(kind == FaultKind::LostResponse);
            assert_eq!(stub.sent(), sent, "{kind}: only a lost response is sent");
            assert_eq!(injector.counts().injected(Service::DynamoDb, kind), 1);
        }
    }

    #[tokio::test]
    async fn lost_response_is_a_dispatch_failure_after_the_request_was_sent() {
        let (stub, injector) = (
            Stub::default(),
            only(Service::DynamoDb, FaultKind::LostResponse),
        );
        let client = ddb(&injector, &stub, RetryConfig::disabled());
        let err = raw_put(&client).await.unwrap_err();
        let SdkError::DispatchFailure(failure) = &err else {
            panic!("expected a dispatch failure, got {err:?}");
        };
        assert!(failure.is_io(), "{err:?}");
        assert_eq!(stub.sent(), 1);
    }

    #[tokio::test]
    async fn a_shorter_attempt_timeout_fires_before_an_injected_timeout() {
        let stub = Stub::default();
        let injector = FaultInjector::new(
            FaultPlan::new(1)
                .with_rate(Service::DynamoDb, FaultKind::Timeout, 1.0)
                .unwrap()
                .with_timeout_delay(Duration::from_secs(60)),
        );
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "faults"))
            .endpoint_url("http://127.0.0.1:9")
            .http_client(injector.wrap(SharedHttpClient::new(stub.clone())))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_millis(50))
                    .build(),
            )
            .build();
        let client = aws_sdk_dynamodb::Client::from_conf(conf);
        let started = std::time::Instant::now();
        let err = raw_put(&client).await.unwrap_err();
        assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(classify(err), StoreError::Transient(_)));
    }

    #[tokio::test]
    async fn the_sdk_retries_throttles_and_server_errors_until_one_succeeds() {
        let stub = Stub::default();
        let injector = FaultInjector::new(
            FaultPlan::new(11)
                .with_rate(Service::DynamoDb, FaultKind::Throttle, 0.3)
                .unwrap()
                .with_rate(Service::DynamoDb, FaultKind::ServerError, 0.2)
                .unwrap(),
        );
        let retry = RetryConfig::standard()
            .with_max_attempts(12)
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(5));
        let client = ddb(&injector, &stub, retry);
        for _ in 0..40 {
            put(&client).await.expect("retried to success");
        }
        let counts = injector.counts();
        assert_eq!(stub.sent(), 40, "every put reached the server exactly once");
        let faults = counts.injected(Service::DynamoDb, FaultKind::Throttle)
            + counts.injected(Service::DynamoDb, FaultKind::ServerError);
        assert!(counts.injected(Service::DynamoDb, FaultKind::Throttle) > 0);
        assert!(counts.injected(Service::DynamoDb, FaultKind::ServerError) > 0);
        assert_eq!(counts.requests(Service::DynamoDb), 40 + faults);
        assert!(
            counts.total() <= super::counts().total(),
            "process counters include ours"
        );
    }

    #[tokio::test]
    async fn sqs_and_kinesis_faults_carry_their_own_throttling_codes() {
        use aws_sdk_dynamodb::error::ProvideErrorMetadata;
        let stub = Stub::default();
        let injector = FaultInjector::new("all.throttle=1".parse::<FaultPlan>().unwrap());
        let http = injector.wrap(SharedHttpClient::new(stub.clone()));
        let creds = Credentials::new("test", "test", None, None, "faults");
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(creds.clone())
                .endpoint_url("http://127.0.0.1:9")
                .http_client(http.clone())
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        let err = sqs
            .send_message()
            .queue_url("http://127.0.0.1:9/000000000000/q")
            .message_body("m")
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("RequestThrottled"), "{err:?}");
        assert!(matches!(classify(err), StoreError::Transient(_)));

        let kinesis = aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(creds)
                .endpoint_url("http://127.0.0.1:9")
                .http_client(http)
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        let err = kinesis
            .put_record()
            .stream_name("s")
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(b"x".to_vec()))
            .send()
            .await
            .unwrap_err();
        assert!(
            err.as_service_error()
                .is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()),
            "{err:?}"
        );
        assert!(matches!(classify(err), StoreError::Transient(_)));
        let err = kinesis
            .list_shards()
            .stream_name("s")
            .send()
            .await
            .unwrap_err();
        assert!(
            err.as_service_error()
                .is_some_and(|e| e.is_limit_exceeded_exception()),
            "{err:?}"
        );
        assert_eq!(stub.sent(), 0);
        let counts = injector.counts();
        assert_eq!(counts.injected(Service::Sqs, FaultKind::Throttle), 1);
        assert_eq!(counts.injected(Service::Kinesis, FaultKind::Throttle), 2);
    }

    #[test]
    fn requests_of_other_services_pass_through() {
        let mut request = HttpRequest::new(SdkBody::from("{}"));
        request
            .headers_mut()
            .insert("x-amz-target", "DynamoDBStreams_20120810.GetRecords");
        assert_eq!(identify(&request), None);
        let mut signed = HttpRequest::new(SdkBody::empty());
        signed.headers_mut().insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
        );
        assert_eq!(identify(&signed), Some((Service::Sqs, String::new())));
    }
}
