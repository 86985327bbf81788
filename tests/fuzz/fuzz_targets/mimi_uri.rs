//! Fuzz target `mimi_uri`: see `mimid_tests::fuzz_checks::mimi_uri` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mimid_tests::fuzz_checks::mimi_uri(data));
