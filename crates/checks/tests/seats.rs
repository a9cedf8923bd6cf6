//! Random command sequences never break the invariants of the seat state machine
//! ([`miclink_checks::seats`] has the model and the checks; the fuzz target runs the same).

use miclink_checks::seats::{Act, MAX_SEATS, Op, ROOMS, Serve, USERS, run};
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
        1 => user.clone().prop_map(|target| Act::Disconnect { target }),
        1 => Just(Act::Terminate),
        1 => Just(Act::Leave),
        1 => Just(Act::Lost),
        1 => Just(Act::Resume),
        2 => (0..MAX_SEATS + 1, prop::option::of(any::<bool>()), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()))
            .prop_map(|(seat, lock, audio, video)| Act::Lock { seat, lock, audio, video }),
        1 => (0..MAX_SEATS + 1, prop::option::of(user.clone()))
            .prop_map(|(seat, target)| Act::Move { seat, target }),
        2 => (user.clone(), prop::option::of(any::<bool>()), prop::option::of(any::<bool>()))
            .prop_map(|(target, mic, camera)| Act::Mute { target, mic, camera }),
        2 => (prop::option::of(any::<bool>()), prop::option::of(any::<bool>()))
            .prop_map(|(mic, camera)| Act::SetMedia { mic, camera }),
        1 => (user.clone(), prop_oneof![Just(0u32), 1u32..30])
            .prop_map(|(target, ban_s)| Act::Kick { target, ban_s }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(audio, video)| Act::Published { audio, video }),
    ]
}

/// Version 3: what the server API does to a room.
fn serve_strategy(users: usize) -> impl Strategy<Value = Serve> {
    let user = 0..users;
    let flag = || prop::option::of(any::<bool>());
    prop_oneof![
        1 => Just(Serve::End),
        2 => prop_oneof![0usize..64, 4090usize..4100].prop_map(Serve::Metadata),
        2 => (user.clone(), prop_oneof![Just(0u32), 1u32..30])
            .prop_map(|(target, ban_s)| Serve::Kick { target, ban_s }),
        2 => user.clone().prop_map(|target| Serve::Unlink { target }),
        2 => (user, flag(), flag()).prop_map(|(target, mic, camera)| Serve::Mute { target, mic, camera }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..ROOMS.len(), 0..USERS.len(), act_strategy())
            .prop_map(|(room, user, act)| Op::Act { room, user, act }),
        2 => prop_oneof![0u64..600, 0u64..20_000].prop_map(Op::Advance),
        1 => (0..ROOMS.len(), serve_strategy(USERS.len()))
            .prop_map(|(room, act)| Op::Serve { room, act }),
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

/// A live room with two linked members publishing, the start of every seat-control sequence:
/// random sequences from an empty server rarely get that far.
fn seated_room() -> Vec<Op> {
    let act = |user: usize, act: Act| Op::Act { room: 0, user, act };
    let mut ops = vec![act(0, Act::Join { anchor: true })];
    for u in 1..4 {
        ops.push(act(u, Act::Join { anchor: false }));
    }
    for u in 1..3 {
        ops.push(act(
            u,
            Act::Apply {
                seat: None,
                timeout_s: None,
            },
        ));
        ops.push(act(
            0,
            Act::Respond {
                target: Some(u),
                accept: true,
            },
        ));
    }
    // One application left pending, for the anchor to accept onto whatever is free then.
    ops.push(act(
        3,
        Act::Apply {
            seat: None,
            timeout_s: None,
        },
    ));
    for u in 0..3 {
        ops.push(act(
            u,
            Act::Published {
                audio: true,
                video: true,
            },
        ));
    }
    ops
}

fn control_strategy() -> impl Strategy<Value = Op> {
    let user = 0..5usize;
    let flag = || prop::option::of(any::<bool>());
    // The anchor's acts come from the anchor (u0), so they mostly succeed.
    let anchor = prop_oneof![
        3 => (0..MAX_SEATS + 1, flag(), flag(), flag())
            .prop_map(|(seat, lock, audio, video)| Act::Lock { seat, lock, audio, video }),
        1 => (0..MAX_SEATS + 1, user.clone())
            .prop_map(|(seat, target)| Act::Move { seat, target: Some(target) }),
        3 => (user.clone(), flag(), flag())
            .prop_map(|(target, mic, camera)| Act::Mute { target, mic, camera }),
        1 => (user.clone(), prop_oneof![Just(0u32), 1u32..30])
            .prop_map(|(target, ban_s)| Act::Kick { target, ban_s }),
        2 => (user.clone(), any::<bool>())
            .prop_map(|(target, accept)| Act::Respond { target: Some(target), accept }),
        1 => user.clone().prop_map(|target| Act::Disconnect { target }),
        1 => (flag(), flag()).prop_map(|(mic, camera)| Act::SetMedia { mic, camera }),
    ];
    let member = prop_oneof![
        1 => (0..MAX_SEATS + 1).prop_map(|seat| Act::Move { seat, target: None }),
        3 => (flag(), flag()).prop_map(|(mic, camera)| Act::SetMedia { mic, camera }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(audio, video)| Act::Published { audio, video }),
        1 => Just(Act::Join { anchor: false }),
        2 => (prop::option::of(0..MAX_SEATS + 1))
            .prop_map(|seat| Act::Apply { seat, timeout_s: None }),
        1 => Just(Act::Terminate),
    ];
    prop_oneof![
        4 => anchor.prop_map(|act| Op::Act { room: 0, user: 0, act }),
        4 => (1..5usize, member).prop_map(|(user, act)| Op::Act { room: 0, user, act }),
        1 => (0u64..20_000).prop_map(Op::Advance),
        2 => serve_strategy(5).prop_map(|act| Op::Serve { room: 0, act }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Locks, moves, mutes, kicks and publish reports on a room that has members to act on.
    #[test]
    fn seat_control_keeps_every_invariant(ops in prop::collection::vec(control_strategy(), 1..60)) {
        let ops: Vec<Op> = seated_room().into_iter().chain(ops).collect();
        let checked = run(&ops);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
