//! Feeds arbitrary bytes to the pgoutput decoder. The decoder promises never
//! to panic on hostile input; any crash found here breaks that promise.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::source::postgres::pgoutput::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode(&Bytes::copy_from_slice(data));
});
