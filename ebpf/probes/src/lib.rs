//! Empty on purpose: userspace lists this crate as a build-dependency so that cargo rebuilds it
//! (userspace/build.rs) when the eBPF sources change, and a build-dependency needs a library.

#![no_std]
