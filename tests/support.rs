//! Shared set-up for the emulator tests: they reach the local emulators only through the
//! SDK's standard `AWS_ENDPOINT_URL*` variables, and fail loudly when those are unset or
//! nothing answers (a test that needs the emulator never passes without it).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variables an emulator test needs, with what to do when one is missing.
const REQUIRED: &[&str] = &["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS"];

/// Checks that the emulators are configured and answering, then loads the SDK config.
/// Panics with instructions otherwise.
pub async fn emulator_config() -> aws_config::SdkConfig {
    for var in REQUIRED {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: this test needs the local emulators. Run it through `make test`, or `make up` and export the variables it prints.")
        });
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let reachable = host
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
        assert!(
            reachable,
            "nothing answers at {url} ({var}): start the emulators with `make up`."
        );
    }
    aws_config::load_from_env().await
}

/// A name unique to this test run, so tests sharing one emulator never collide.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A template `Stage` unique to this run (the template allows 1-16 of `[a-z0-9-]`), so
/// every test gets fresh streams, tables and queues on a shared emulator.
pub fn stage(prefix: char) -> String {
    let digits: String = unique("s").chars().filter(char::is_ascii_digit).collect();
    format!("{prefix}{}", &digits[digits.len().saturating_sub(12)..])
}

/// The template with a fresh `Stage` (prefix `prefix`) and `params`, its resources
/// created in the emulators (queue URLs and ARNs resolved from them).
pub async fn fresh_stack(
    sdk: &aws_config::SdkConfig,
    prefix: char,
    params: &[(&str, &str)],
) -> shardline_aws::template::Template {
    let path = shardline_testkit::repo_root().join("template.yaml");
    let mut t = shardline_aws::template::Template::load(&path).expect("template.yaml parses");
    t.set_param("Stage", &stage(prefix)).expect("Stage");
    for (k, v) in params {
        t.set_param(k, v).expect("parameter");
    }
    shardline_aws::bootstrap::bootstrap(sdk, &mut t)
        .await
        .expect("bootstrap the template's resources");
    t
}
