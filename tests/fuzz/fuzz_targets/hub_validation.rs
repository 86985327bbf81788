//! Fuzz target `hub_validation`: see `mimid_tests::fuzz_checks::hub_validation` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mimid_tests::fuzz_checks::hub_validation(data));
