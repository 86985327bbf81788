//! Fuzz target `wire_requests`: see `mimid_tests::fuzz_checks::wire_requests` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mimid_tests::fuzz_checks::wire_requests(data));
