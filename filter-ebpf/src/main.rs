//! XDP packet filter: strict parsing, allow/block lists, automatic blocks and
//! per-source rate limits. Every verdict is counted by reason.
//!
//! Order of decisions (first match wins):
//! 1. malformed frame (a header claimed but missing or invalid) -> drop
//! 2. non-IP frame (ARP, LLDP, ...) -> pass
//! 3. allowlist -> pass, 4. blocklist or automatic block -> drop
//! 5. port rule (drop / only-from / rate limit), else 6. default source limit.
//!
//! One file per concern: `parse` (headers), `lists` (allow and block
//! lookups), `ratelimit` (rules, only-from, GCRA buckets), `autoblock`,
//! `events` (ring buffer), `stats` (counters), `maps` (every map), with
//! `atomic` and `clock` helpers.
#![no_std]
#![no_main]
// `atomic_cxchg` (see atomic.rs): the BPF target has no `AtomicU64::compare_exchange`.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic intrinsics, see above")]
#![deny(clippy::undocumented_unsafe_blocks)]

mod atomic;
mod autoblock;
mod clock;
mod events;
mod lists;
mod maps;
mod parse;
mod ratelimit;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use filter_common::{IPV4_MAPPED_WORD, LAYOUT_VERSION, NO_RULE, reason, rule_id};

use crate::{
    clock::CoarseClock,
    lists::{block_reason, host_blocked, listed, trie_may_block},
    maps::{ALLOW_V4, ALLOW_V6, BLOCK_V4, BLOCK_V6, CONFIG, SHADOW_BLOCK_V4, SHADOW_BLOCK_V6},
    parse::{Packet, Parsed},
    ratelimit::{apply_rule, rule_for},
    stats::{count, count_rule},
};

#[xdp]
// aya's macro wraps this function in the program's entry point, which calls
// it: inlined, a packet saves a BPF-to-BPF call and its return (7-8 ns per
// packet here, where a return goes through the SRSO thunk). LLVM inlined it
// only while it was small enough; now it always is.
#[inline(always)]
pub fn filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the context field is a u32, widened by aya"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    // Drops are sampled where their details are at hand, so that nothing
    // more stays alive on the (nearly full) stack.
    let why = match parse::parse(&ctx) {
        Ok(Parsed::Ip(packet)) => {
            // One copy of the decision per family: the family is then a
            // constant in each, its branches gone (and LLVM may fold an
            // IPv4 source's mapped-prefix words into the hashes and
            // compares).
            let (why, rule, shadow) = if packet.is_v6 {
                decide::<true>(&packet, len)
            } else {
                decide::<false>(&packet, len)
            };
            if reason::is_drop(why) {
                events::sampled_drop(ifindex, why, rule, Some(&packet), len);
            }
            if shadow != reason::PASS {
                // A would-be drop of a shadow entry or rule: counted on top
                // of the real verdict.
                count(ifindex, shadow, len);
            }
            why
        }
        Ok(Parsed::NonIp) => reason::NON_IP,
        Err(parse::Malformed) => {
            events::sampled_drop(ifindex, reason::MALFORMED, NO_RULE, None, len);
            reason::MALFORMED
        }
    };
    count(ifindex, why, len);
    if reason::is_drop(why) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The reason of an IP packet's verdict, the id of the rule that decided it
/// (or `NO_RULE` when a list or no rule did), and the shadow reason of a
/// would-be drop (`reason::PASS` for none).
#[inline(always)]
fn decide<const V6: bool>(packet: &Packet, len: u64) -> (u32, u16, u32) {
    // The family and an IPv4 source's mapped-prefix words as constants in
    // this copy, not values read back from the parser's stack slots: LLVM
    // folds them into every hash and compare of the source.
    let packet = &if V6 {
        Packet {
            is_v6: true,
            ..*packet
        }
    } else {
        Packet {
            is_v6: false,
            source: [0, 0, IPV4_MAPPED_WORD, packet.source[3]],
            ..*packet
        }
    };
    let mut clock = CoarseClock::new();
    // Most filters have an empty allowlist: skip its lookup then.
    let config = CONFIG.get(0);
    // A blocked host, IPv4 /16 to /31 or IPv6 /40 to /64 (most of a large
    // blocklist) is found in `BLOCK_HOSTS` (keyed by `packet.source`'s
    // words) without a trie lookup. The table and the tries are looked in only where
    // `BLOCK_SUMMARY` says they may hold an entry covering the source: most
    // unlisted sources skip both.
    let host = config.is_some_and(|c| host_blocked(&packet.source, V6, c, &mut clock));
    let in_trie = !host && config.is_none_or(|c| trie_may_block(&packet.source, V6, c));
    let (allowed, blocked) = if V6 {
        let allow = config.is_none_or(|c| c.allow_v6_entries != 0);
        (
            allow && listed(&ALLOW_V6, 128, packet.source_bytes(), &mut clock),
            if host {
                reason::BLOCKLIST
            } else if in_trie {
                block_reason(&BLOCK_V6, 128, packet.source_bytes(), &mut clock)
            } else {
                reason::PASS
            },
        )
    } else {
        let v4 = packet.source_v4();
        let allow = config.is_none_or(|c| c.allow_v4_entries != 0);
        (
            allow && listed(&ALLOW_V4, 32, v4, &mut clock),
            if host {
                reason::BLOCKLIST
            } else if in_trie {
                block_reason(&BLOCK_V4, 32, v4, &mut clock)
            } else {
                reason::PASS
            },
        )
    };
    if allowed {
        return (reason::ALLOWLIST, NO_RULE, reason::PASS);
    }
    // A shadow policy's blocks, in tries of their own: looked up only while
    // there are some, and never part of the verdict.
    let shadow_blocked = if V6 {
        config.is_some_and(|c| c.shadow_v6_entries != 0)
            && listed(&SHADOW_BLOCK_V6, 128, packet.source_bytes(), &mut clock)
    } else {
        config.is_some_and(|c| c.shadow_v4_entries != 0)
            && listed(&SHADOW_BLOCK_V4, 32, packet.source_v4(), &mut clock)
    };
    let shadow = if shadow_blocked {
        reason::SHADOW_BLOCKLIST
    } else {
        reason::PASS
    };
    if blocked != reason::PASS {
        return (blocked, NO_RULE, shadow);
    }

    let (slot, rule) = rule_for(packet, config);
    let Some(rule) = rule else {
        return (reason::PASS, NO_RULE, shadow);
    };
    let (why, rule_shadow) = apply_rule(slot, rule, packet, config, len, &mut clock);
    let id = rule_id(slot);
    count_rule(id, why, len);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "rule ids are below MAX_RULES, which fits u16 (asserted in filter-common)"
    )]
    // A shadow rule's would-be drop is the more specific news.
    let shadow = if rule_shadow == reason::PASS {
        shadow
    } else {
        rule_shadow
    };
    (why, id as u16, shadow)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The maps' layout version, for user space to check the object against
/// `filter_common::abi` (section and symbol named there). Not a `.rodata`
/// variable: the loader would turn that into a map.
#[unsafe(link_section = "filter_abi")]
#[unsafe(no_mangle)]
static FILTER_LAYOUT_VERSION: u32 = LAYOUT_VERSION;
