//! What the emulator tests share: finding the emulators, or failing with how to start
//! them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

/// The SDK configuration of the emulators, or a panic saying how to start them: the
/// endpoint variables `make test` (or `make up`) sets, each answering.
pub async fn emulators() -> aws_config::SdkConfig {
    for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS"] {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: this test needs the local emulators. Run it through `make test`, or `make up` and export the variables it prints.")
        });
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        assert!(
            std::net::TcpStream::connect(host).is_ok(),
            "nothing answers at {url}: start the emulators with `make up`."
        );
    }
    aws_config::load_from_env().await
}

/// A tag unique to this test process and moment, for table, bucket and stage names.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}
