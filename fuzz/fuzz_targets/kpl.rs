//! afl target `kpl`: see [`shardline_fuzz::kpl`] for what it checks.

fn main() {
    afl::fuzz!(|data: &[u8]| shardline_fuzz::kpl(data));
}
