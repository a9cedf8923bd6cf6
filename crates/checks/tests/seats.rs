//! Random command sequences never break the invariants of the seat state machine
//! ([`miclink_checks::seats`] has the model and the checks; the fuzz target runs the same).

use miclink_checks::seats::{Act, MAX_SEATS, Op, ROOMS, USERS, run};
use proptest::prelude::*;

fn act_strategy() -> impl Strategy<Value = Act> {
    let user = 0..USERS.len();
    prop_oneof![
        3 => any::<bool>().prop_map(|anchor| Act::Join { anchor }),
        3 => (prop::option::of(0..MAX_SEATS + 1), prop::option::of(0u32..4))
            .prop_map(|(seat, timeout_s)| Act::Apply { seat, timeout_s }),
        2 => user.clone().prop_map(|target| Act::Invite { target }),
        1 => prop::option::of(user.clone()).prop_map(|target| Act::Cancel { target }),
        3 => (prop::option::of(user.clone()), any::<bool>())
            .prop_map(|(target, accept)| Act::Respond { target, accept }),
        1 => user.prop_map(|target| Act::Disconnect { target }),
        1 => Just(Act::Terminate),
        1 => Just(Act::Leave),
        1 => Just(Act::Lost),
        1 => Just(Act::Resume),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..ROOMS.len(), 0..USERS.len(), act_strategy())
            .prop_map(|(room, user, act)| Op::Act { room, user, act }),
        2 => prop_oneof![0u64..600, 0u64..20_000].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(ops in prop::collection::vec(op_strategy(), 1..80)) {
        let checked = run(&ops);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
