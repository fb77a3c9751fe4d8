//! The cache designs this crate models, named as `--design` spells them: one enum, so that a
//! design is chosen, parsed, listed and printed in one place.

use std::{fmt, str::FromStr};

use clap::builder::PossibleValue;

/// A dm-bufio cache design. The order of [`Design::ALL`] is the order tables and lists show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Design {
    /// [`ClassicCache`](crate::ClassicCache).
    Classic,
    /// [`ShardedCache`](crate::ShardedCache).
    Sharded,
    /// [`LockFreeCache`](crate::LockFreeCache).
    LockFree,
    /// [`ClassicCache`](crate::ClassicCache) of a no-sleep client
    /// ([`NoSleep`](crate::NoSleep) locks).
    ClassicNoSleep,
    /// [`ShardedCache`](crate::ShardedCache) of a no-sleep client
    /// ([`NoSleep`](crate::NoSleep) locks).
    ShardedNoSleep,
}

impl Design {
    /// Every design.
    pub const ALL: [Design; 5] = [
        Design::Classic,
        Design::Sharded,
        Design::LockFree,
        Design::ClassicNoSleep,
        Design::ShardedNoSleep,
    ];

    /// The designs run when none is named: the kernel's for its usual clients, and ours. The
    /// no-sleep ones model only clients created so (dm-verity's with `try_verify_in_tasklet`).
    pub const DEFAULT: [Design; 3] = [Design::Classic, Design::Sharded, Design::LockFree];

    /// The name users type and read (`--design`, reports, exported traces); never changes.
    pub fn name(&self) -> &'static str {
        match self {
            Design::Classic => "classic",
            Design::Sharded => "sharded",
            Design::LockFree => "lockfree",
            Design::ClassicNoSleep => "classic-nosleep",
            Design::ShardedNoSleep => "sharded-nosleep",
        }
    }

    /// What distinguishes the design, in a few words (the `--design` help).
    pub fn description(&self) -> &'static str {
        match self {
            Design::Classic => "one client mutex (Linux ≤ 6.3)",
            Design::Sharded => "per-tree rw-locks (Linux ≥ 6.4)",
            Design::LockFree => "bufscope's lock-free lookups",
            Design::ClassicNoSleep => "a no-sleep client's one spinlock (Linux ≤ 6.3)",
            Design::ShardedNoSleep => "a no-sleep client's per-tree rwlocks (Linux ≥ 6.4)",
        }
    }

    /// Whether a lookup takes the client lock, as every operation of the classic designs does.
    /// Where it does not (6.4+, ours), a lookup can miss a block another thread is inserting
    /// ([`BufferCache::lookup_racing_insert`](crate::BufferCache::lookup_racing_insert)), and a
    /// prefetch takes the client lock block by block, for the blocks it inserts.
    pub fn lookups_take_the_client_lock(&self) -> bool {
        matches!(self, Design::Classic | Design::ClassicNoSleep)
    }

    /// A no-sleep client's design (DM_BUFIO_CLIENT_NO_SLEEP): spinning locks, no sleeping.
    pub fn no_sleep(&self) -> bool {
        matches!(self, Design::ClassicNoSleep | Design::ShardedNoSleep)
    }
}

/// The name; `pad` so that width and alignment (`{design:<8}`) apply.
impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A design name that is none of [`Design::ALL`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown design `{name}`; the designs are {}",
    Design::ALL.map(|d| d.name()).join(", ")
)]
pub struct UnknownDesign {
    pub name: String,
}

/// By [`Design::name`], exactly.
impl FromStr for Design {
    type Err = UnknownDesign;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Design::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| UnknownDesign {
                name: name.to_owned(),
            })
    }
}

/// `--design <DESIGN>`: the values are the names, each with its description as help.
impl clap::ValueEnum for Design {
    fn value_variants<'a>() -> &'a [Self] {
        &Design::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()).help(self.description()))
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn names_are_the_user_visible_ones_and_parse_back() {
        let names = Design::ALL.map(|d| d.name());
        assert_eq!(
            names,
            [
                "classic",
                "sharded",
                "lockfree",
                "classic-nosleep",
                "sharded-nosleep"
            ]
        );
        for design in Design::ALL {
            assert_eq!(design.name().parse(), Ok(design));
            assert_eq!(design.to_string(), design.name());
        }
        assert_eq!(format!("[{:<8}]", Design::Classic), "[classic ]");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_valid_ones() {
        let err = "Classic".parse::<Design>().unwrap_err();
        assert_eq!(
            err,
            UnknownDesign {
                name: "Classic".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown design `Classic`; the designs are classic, sharded, lockfree, classic-nosleep, \
             sharded-nosleep"
        );
    }

    #[test]
    fn clap_offers_the_names_with_the_descriptions_as_help() {
        let values: Vec<_> = Design::value_variants()
            .iter()
            .map(|d| {
                let value = d.to_possible_value().expect("no design is hidden");
                (
                    value.get_name().to_owned(),
                    value.get_help().map(ToString::to_string),
                )
            })
            .collect();
        assert_eq!(
            values,
            Design::ALL.map(|d| (d.name().to_owned(), Some(d.description().to_owned())))
        );
        assert_eq!(
            <Design as ValueEnum>::from_str("lockfree", false),
            Ok(Design::LockFree),
            "clap parses by name"
        );
    }
}
