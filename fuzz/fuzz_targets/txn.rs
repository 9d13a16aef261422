//! afl target `txn`: see [`shardline_fuzz::txn`] for what it checks.

fn main() {
    afl::fuzz!(|data: &[u8]| shardline_fuzz::txn(data));
}
