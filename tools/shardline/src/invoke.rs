//! In-process invocation: the deployed handlers, built from a template function's
//! environment, behind the runner's [`Invoker`] interface.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures::FutureExt;
use shardline_aws::template::FunctionSpec;
use window_aggregator::tumbling::is_time_window_event;

use crate::runner::{InvokeFuture, Invoker};

/// Lambda's default timeout in the template; the handlers' retry budget.
const DEADLINE: Duration = Duration::from_secs(60);

/// Environment variable that makes in-process invocations crash, for the soak:
/// `rate=0.03,every=5,seed=5,max_ms=300` (a share of invocations at random, and every
/// `every`-th one for certain). A crashing invocation is dropped at a random moment
/// within `max_ms` of its start, wherever its handler is (before, between or after its
/// writes), and answers with a function error, as a Lambda that ran out of time or was
/// killed does; the runner then retries the batch as Lambda would. Unset: no crashes.
pub const CRASH_ENV: &str = "SHARDLINE_CRASH";

/// Crashes injected into in-process invocations in this process.
pub static CRASHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// When in-process invocations crash.
#[derive(Clone, Debug, PartialEq)]
pub struct CrashPlan {
    /// Share of invocations that crash.
    pub rate: f64,
    /// Seed of the crash decisions.
    pub seed: u64,
    /// A crash happens within this long of the invocation's start.
    pub max_ms: u64,
    /// Every `every`-th invocation crashes too (0: none), so that a short run crashes.
    pub every: u64,
}

impl std::str::FromStr for CrashPlan {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut plan = CrashPlan {
            rate: 0.0,
            seed: 1,
            max_ms: 300,
            every: 0,
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{CRASH_ENV}: {item:?} is not KEY=VALUE"))?;
            match k {
                "rate" => plan.rate = v.parse()?,
                "seed" => plan.seed = v.parse()?,
                "max_ms" => plan.max_ms = v.parse()?,
                "every" => plan.every = v.parse()?,
                _ => bail!("{CRASH_ENV}: unknown key {k:?} (rate, every, seed, max_ms)"),
            }
        }
        if !(0.0..=1.0).contains(&plan.rate) {
            bail!("{CRASH_ENV}: rate {} is outside 0..1", plan.rate);
        }
        Ok(plan)
    }
}

/// Decides, invocation by invocation, whether and when to crash.
struct Crasher {
    plan: CrashPlan,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    invocations: std::sync::atomic::AtomicU64,
}

impl Crasher {
    fn from_env() -> anyhow::Result<Option<Arc<Self>>> {
        let Some(v) = std::env::var(CRASH_ENV).ok().filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let plan: CrashPlan = v.parse()?;
        use rand::SeedableRng as _;
        Ok(Some(Arc::new(Self {
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(plan.seed)),
            invocations: std::sync::atomic::AtomicU64::new(0),
            plan,
        })))
    }

    /// The moment this invocation crashes, if it does.
    fn next(&self) -> Option<Duration> {
        use rand::Rng as _;
        let n = self
            .invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut rng = self.rng.lock().ok()?;
        let due = self.plan.every > 0 && n % self.plan.every == 0;
        (rng.random::<f64>() < self.plan.rate || due)
            .then(|| Duration::from_millis(rng.random_range(0..=self.plan.max_ms)))
    }
}

/// Runs an invocation, crashing it if the plan says so: the handler's future is dropped
/// at the chosen moment, whatever it has written by then.
async fn maybe_crash(
    crasher: Option<&Crasher>,
    run: impl std::future::Future<Output = Result<serde_json::Value, String>>,
) -> Result<serde_json::Value, String> {
    let Some(at) = crasher.and_then(Crasher::next) else {
        return run.await;
    };
    tokio::select! {
        r = run => r,
        () = tokio::time::sleep(at) => {
            CRASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(format!("injected crash after {} ms", at.as_millis()))
        }
    }
}

/// The handler of a template function, in this process, on the stores its environment
/// names (reached through the SDK's standard endpoint variables).
pub fn in_process(f: &FunctionSpec, sdk: &aws_config::SdkConfig) -> anyhow::Result<Invoker> {
    let env = |k: &str| f.environment.get(k).cloned();
    let crasher = Crasher::from_env()?;
    match f.binary.as_str() {
        "fraud-scorer" => {
            let cfg = fraud_scorer::Config::from_lookup(env)?;
            let scorer = Arc::new(fraud_scorer::deployed(&cfg, sdk));
            Ok(Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
                let (scorer, crasher) = (scorer.clone(), crasher.clone());
                Box::pin(async move {
                    let deadline = Some(tokio::time::Instant::now() + DEADLINE);
                    maybe_crash(crasher.as_deref(), async {
                        let run = AssertUnwindSafe(scorer.handle(&payload, deadline))
                            .catch_unwind()
                            .await;
                        match run {
                            Ok(Ok(report)) => {
                                serde_json::to_value(report.response).map_err(|e| e.to_string())
                            }
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("handler panicked".to_owned()),
                        }
                    })
                    .await
                })
            }))
        }
        "window-aggregator" => {
            let cfg = window_aggregator::Config::from_lookup(env)?;
            let agg = Arc::new(window_aggregator::deployed(&cfg, sdk));
            Ok(Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
                let (agg, crasher) = (agg.clone(), crasher.clone());
                Box::pin(async move {
                    let deadline = Some(tokio::time::Instant::now() + DEADLINE);
                    maybe_crash(crasher.as_deref(), async {
                        let run = AssertUnwindSafe(async {
                            if is_time_window_event(&payload) {
                                agg.handle_time_window(&payload, deadline)
                                    .await
                                    .map(|r| serde_json::to_value(r).unwrap_or_default())
                            } else {
                                agg.handle(&payload, deadline)
                                    .await
                                    .map(|r| serde_json::to_value(r.response).unwrap_or_default())
                            }
                        })
                        .catch_unwind()
                        .await;
                        match run {
                            Ok(Ok(v)) => Ok(v),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("handler panicked".to_owned()),
                        }
                    })
                    .await
                })
            }))
        }
        other => bail!("no in-process handler for binary {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_plan_parses_and_rejects_what_it_does_not_know() {
        let p: CrashPlan = "rate=0.05,seed=9,max_ms=50,every=3".parse().unwrap();
        assert_eq!(
            p,
            CrashPlan {
                rate: 0.05,
                seed: 9,
                max_ms: 50,
                every: 3,
            }
        );
        assert!("rate=2".parse::<CrashPlan>().is_err());
        assert!("often=1".parse::<CrashPlan>().is_err());
        assert!("rate".parse::<CrashPlan>().is_err());
    }

    #[tokio::test]
    async fn a_crash_drops_the_invocation_part_way() {
        let crasher = Crasher {
            plan: CrashPlan {
                rate: 1.0,
                seed: 1,
                max_ms: 5,
                every: 0,
            },
            rng: std::sync::Mutex::new(rand::SeedableRng::seed_from_u64(1)),
            invocations: std::sync::atomic::AtomicU64::new(0),
        };
        let before = CRASHES.load(std::sync::atomic::Ordering::Relaxed);
        let wrote_after = std::sync::atomic::AtomicBool::new(false);
        let r = maybe_crash(Some(&crasher), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wrote_after.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(serde_json::json!({}))
        })
        .await;
        assert!(r.is_err(), "a crash is a function error");
        assert!(!wrote_after.load(std::sync::atomic::Ordering::SeqCst));
        assert!(CRASHES.load(std::sync::atomic::Ordering::Relaxed) > before);
    }
}
