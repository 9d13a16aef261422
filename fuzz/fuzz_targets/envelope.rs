//! afl target `envelope`: see [`shardline_fuzz::envelope`] for what it checks.

fn main() {
    afl::fuzz!(|data: &[u8]| shardline_fuzz::envelope(data));
}
