//! Round trips of every frame type, truncation, random and mutated bytes, limits, the
//! stream decoder and the wire-to-engine step.

use proptest::prelude::*;
use reservoir_engine::{
    Command, Counters, LineResult, Reply, ReservationLineView, ReservationState, ReservationView, ResultCode, TenantId,
};
use reservoir_net::wire::{frame_type, FRAME_HEADER_BYTES};
use reservoir_net::{
    decode_client_frame, decode_server_frame, encode_reply, negotiate_version, Action, AdminAction, ClientFrame,
    ErrorFrame, FrameDecoder, Hello, HelloReply, ItemPage, ItemState, NodeRole, Operation, OperationKind,
    OperationResult, ProtocolErrorCode, ReplyFrame, Request, Role, ServerFrame, ServerLimits, Service, SkuSummary,
    TenantEntry, WireError, WireImportRow, WireLine, FRAME_BYTES_MAX, OPERATIONS_PER_REQUEST_MAX, TENANTS_PER_LIST_MAX,
};

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Names as clients send them: mostly valid, some empty, too long, with spaces or controls.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9_-]{1,16}",
        1 => "[a-zÄÖ \u{7}]{0,70}",
        1 => "x{60,100}",
    ]
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 1i64..1_000, 1 => any::<i64>(), 1 => Just(0)]
}

fn line() -> impl Strategy<Value = WireLine> {
    (text(), text(), number()).prop_map(|(sku, location, quantity)| WireLine { sku, location, quantity })
}

fn lines() -> impl Strategy<Value = Vec<WireLine>> {
    prop_oneof![8 => prop::collection::vec(line(), 0..4), 1 => prop::collection::vec(line(), 60..70)]
}

fn row() -> impl Strategy<Value = WireImportRow> {
    (text(), text(), number(), proptest::option::of(number()), proptest::option::of(number())).prop_map(
        |(sku, location, on_hand, safety_stock, backorder_limit)| WireImportRow {
            sku,
            location,
            on_hand,
            safety_stock,
            backorder_limit,
        },
    )
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (text(), any::<u64>(), any::<bool>(), lines()).prop_map(|(reservation, ttl_ms, allow_partial, lines)| {
            Operation::Reserve { reservation, ttl_ms, allow_partial, lines }
        }),
        (text(), text(), any::<u64>()).prop_map(|(operation, reservation, ttl_ms)| Operation::Extend {
            operation,
            reservation,
            ttl_ms
        }),
        (text(), text(), proptest::option::of(lines())).prop_map(|(operation, reservation, lines)| Operation::Commit {
            operation,
            reservation,
            lines
        }),
        (text(), text(), proptest::option::of(lines()))
            .prop_map(|(operation, reservation, lines)| Operation::Release { operation, reservation, lines }),
        (text(), text(), text(), number()).prop_map(|(operation, sku, location, quantity)| Operation::Receive {
            operation,
            sku,
            location,
            quantity
        }),
        (text(), text(), text(), number(), text()).prop_map(|(operation, sku, location, delta, reason)| {
            Operation::Adjust { operation, sku, location, delta, reason }
        }),
        (text(), text(), text(), proptest::option::of(number()), number()).prop_map(
            |(operation, sku, location, expected, on_hand)| Operation::SetOnHand {
                operation,
                sku,
                location,
                expected,
                on_hand
            }
        ),
        (text(), text(), text(), text(), number()).prop_map(|(operation, sku, from, to, quantity)| Operation::Move {
            operation,
            sku,
            from,
            to,
            quantity
        }),
        (text(), text(), text(), number(), number()).prop_map(
            |(operation, sku, location, safety_stock, backorder_limit)| Operation::SetPolicy {
                operation,
                sku,
                location,
                safety_stock,
                backorder_limit
            }
        ),
        (text(), prop::collection::vec(row(), 0..6))
            .prop_map(|(operation, rows)| Operation::Import { operation, rows }),
        (text(), text()).prop_map(|(sku, location)| Operation::GetItem { sku, location }),
        text().prop_map(|sku| Operation::GetSku { sku }),
        (any::<u64>(), any::<u32>()).prop_map(|(cursor, limit)| Operation::ListItems { cursor, limit }),
        text().prop_map(|reservation| Operation::GetReservation { reservation }),
        text().prop_map(|name| Operation::CreateTenant { name }),
        (text(), any::<bool>()).prop_map(|(tenant, revoke_others)| Operation::IssueToken { tenant, revoke_others }),
        (prop::sample::select(Service::ALL), any::<bool>())
            .prop_map(|(service, revoke_others)| Operation::IssueServiceToken { service, revoke_others }),
        Just(Operation::ListTenants),
        Just(Operation::TakeSnapshot),
        Just(Operation::Status),
        Just(Operation::Promote),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(version_min, version_max, token)| ClientFrame::Hello(Hello { version_min, version_max, token })
        ),
        (any::<u64>(), prop::collection::vec(operation(), 0..12))
            .prop_map(|(request_id, operations)| ClientFrame::Request(Request { request_id, operations })),
        Just(ClientFrame::Goodbye),
    ]
}

fn code() -> impl Strategy<Value = ResultCode> {
    prop::sample::select(ResultCode::ALL)
}

fn refusal() -> impl Strategy<Value = ResultCode> {
    prop::sample::select(ResultCode::ALL.iter().copied().filter(|code| !code.is_ok()).collect::<Vec<_>>())
}

fn reply() -> impl Strategy<Value = Reply> {
    let line = (code(), any::<i64>(), any::<i64>(), any::<i64>())
        .prop_map(|(code, requested, applied, available)| LineResult { code, requested, applied, available });
    (code(), prop::collection::vec(line, 0..5), any::<u64>(), any::<i64>(), any::<u64>()).prop_map(
        |(code, lines, deadline_ms, on_hand, count)| Reply { code, lines: lines.into(), deadline_ms, on_hand, count },
    )
}

fn counters() -> impl Strategy<Value = Counters> {
    prop::array::uniform6(any::<i64>()).prop_map(|[a, b, c, d, e, f]| Counters {
        on_hand: a,
        reserved: b,
        safety_stock: c,
        backorder_limit: d,
        inflow_total: e,
        committed_total: f,
    })
}

fn item() -> impl Strategy<Value = ItemState> {
    (text(), text(), counters()).prop_map(|(sku, location, counters)| ItemState { sku, location, counters })
}

fn reservation_view() -> impl Strategy<Value = ReservationView> {
    let state = prop::sample::select(vec![
        ReservationState::Open,
        ReservationState::PartiallyCommitted,
        ReservationState::Committed,
        ReservationState::Released,
        ReservationState::Expired,
        ReservationState::Refused,
    ]);
    let line = (text(), text(), prop::array::uniform4(any::<i64>())).prop_map(
        |(sku, location, [requested, reserved, committed, released])| ReservationLineView {
            sku,
            location,
            requested,
            reserved,
            committed,
            released,
        },
    );
    (text(), state, any::<u64>(), prop::collection::vec(line, 0..4), reply()).prop_map(
        |(reservation, state, deadline_ms, lines, reply)| ReservationView {
            reservation,
            state,
            deadline_ms,
            lines,
            reply,
        },
    )
}

/// Tokens as a server mints them (`rsv_` and 64 hex digits), and other strings a `str` holds.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![4 => "rsv_[0-9a-f]{64}", 1 => "\\PC{0,60}"]
}

fn tenant_entry() -> impl Strategy<Value = TenantEntry> {
    (text(), prop_oneof![3 => 0u32..4, 1 => any::<u32>()]).prop_map(|(name, tokens)| TenantEntry { name, tokens })
}

fn operation_result() -> impl Strategy<Value = OperationResult> {
    let reply_kinds: Vec<OperationKind> =
        OperationKind::ALL.iter().copied().filter(|kind| kind.has_engine_reply()).collect();
    prop_oneof![
        (prop::sample::select(reply_kinds), reply()).prop_map(|(kind, reply)| OperationResult::Reply { kind, reply }),
        prop_oneof![item().prop_map(Ok), refusal().prop_map(Err)].prop_map(OperationResult::Item),
        prop_oneof![
            (any::<u32>(), counters(), prop::collection::vec(item(), 0..4))
                .prop_map(|(location_count, total, locations)| Ok(SkuSummary { location_count, total, locations })),
            refusal().prop_map(Err)
        ]
        .prop_map(OperationResult::Sku),
        prop_oneof![
            (prop::collection::vec(item(), 0..4), proptest::option::of(any::<u64>()))
                .prop_map(|(items, next_cursor)| Ok(ItemPage { items, next_cursor })),
            refusal().prop_map(Err)
        ]
        .prop_map(OperationResult::Items),
        prop_oneof![reservation_view().prop_map(Ok), refusal().prop_map(Err)].prop_map(OperationResult::Reservation),
        prop_oneof![token().prop_map(Ok), refusal().prop_map(Err)].prop_map(OperationResult::Token),
        prop_oneof![token().prop_map(Ok), refusal().prop_map(Err)].prop_map(OperationResult::ServiceToken),
        prop_oneof![prop::collection::vec(tenant_entry(), 0..5).prop_map(Ok), refusal().prop_map(Err)]
            .prop_map(OperationResult::Tenants),
        prop_oneof![text().prop_map(Ok), refusal().prop_map(Err)].prop_map(OperationResult::Status),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let role = prop_oneof![text().prop_map(|name| Role::Tenant { name }), Just(Role::Admin), Just(Role::Replication)];
    let node = prop::sample::select(vec![NodeRole::Primary, NodeRole::Standby, NodeRole::Fenced]);
    let limits = (any::<u32>(), any::<u16>(), any::<u32>(), any::<u8>(), any::<u16>(), any::<u32>(), any::<u32>())
        .prop_map(|(a, b, c, d, e, f, g)| ServerLimits {
            frame_bytes_max: a,
            operations_per_request_max: b,
            requests_in_flight_max: c,
            name_bytes_max: d,
            lines_per_reservation_max: e,
            import_rows_max: f,
            page_items_max: g,
        });
    let protocol_code = prop::sample::select(ProtocolErrorCode::ALL);
    prop_oneof![
        (any::<u16>(), role, any::<u64>(), limits, node).prop_map(|(version, role, epoch, limits, node)| {
            ServerFrame::HelloReply(HelloReply { version, role, epoch, limits, node })
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0u16..1_000,
            any::<bool>(),
            prop::collection::vec(operation_result(), 0..10)
        )
            .prop_map(|(request_id, epoch, lsn, first_operation, is_final, results)| {
                ServerFrame::Reply(ReplyFrame { request_id, epoch, lsn, first_operation, is_final, results })
            }),
        (
            proptest::option::of(any::<u64>()),
            protocol_code,
            "\\PC{0,40}",
            proptest::option::of(any::<u32>()),
            proptest::option::of("[a-z0-9.:]{0,40}")
        )
            .prop_map(|(request_id, code, message, retry_after_ms, primary)| {
                ServerFrame::Error(ErrorFrame { request_id, code, message, retry_after_ms, primary })
            }),
        Just(ServerFrame::Goodbye),
    ]
}

fn encode_client(frame: &ClientFrame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("generated frames are encodable");
    out
}

fn encode_server(frame: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("generated frames are encodable");
    out
}

/// Decodes as both directions; must never panic. Returns whether either decoded.
fn decode_any(bytes: &[u8]) -> bool {
    let client = decode_client_frame(bytes);
    let server = decode_server_frame(bytes);
    for error in [client.as_ref().err(), server.as_ref().err()].into_iter().flatten() {
        // Every error maps to a protocol code and has a message.
        assert!(error.code().number() >= 100 && !error.to_string().is_empty());
    }
    client.is_ok() || server.is_ok()
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = encode_client(&frame);
        prop_assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - FRAME_HEADER_BYTES);
        prop_assert_eq!(decode_client_frame(&bytes), Ok(frame.as_decoded()));
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let bytes = encode_server(&frame);
        prop_assert_eq!(decode_server_frame(&bytes), Ok(frame));
    }

    /// Every proper prefix of a valid frame is an error (truncated), never a panic, and a
    /// frame with one byte too many is an error too.
    #[test]
    fn truncated_frames_are_errors(client in client_frame(), server in server_frame()) {
        for bytes in [encode_client(&client), encode_server(&server)] {
            for cut in 0..bytes.len() {
                prop_assert!(!decode_any(&bytes[..cut]), "prefix of {} bytes decoded", cut);
                let error = decode_client_frame(&bytes[..cut]).unwrap_err();
                prop_assert!(error.closes_connection(), "{:?}", error);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(!decode_any(&longer));
        }
    }

}

proptest! {
    // Thousands of damaged and random inputs: the decoders' no-panic property.
    #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

    /// Mutated valid frames (flipped bytes, changed lengths) never panic the decoders.
    #[test]
    fn mutated_frames_never_panic(
        client in client_frame(),
        server in server_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        for mut bytes in [encode_client(&client), encode_server(&server)] {
            for (index, value) in &edits {
                let at = index.index(bytes.len());
                bytes[at] = *value;
            }
            decode_any(&bytes);
            // Also with the header fixed up, so the body decoders see the damage.
            let length = (bytes.len() - FRAME_HEADER_BYTES) as u32;
            bytes[..4].copy_from_slice(&length.to_le_bytes());
            decode_any(&bytes);
        }
    }

    /// Random bytes, framed or not, never panic the decoders or the stream decoder.
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..400), chunk in 1usize..64) {
        decode_any(&body);
        let mut framed = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        framed.push(body.first().map_or(frame_type::REQUEST, |b| b & 0x83));
        framed.extend_from_slice(&body);
        decode_any(&framed);
        let mut decoder = FrameDecoder::new();
        for piece in body.chunks(chunk) {
            let mut input = piece;
            while !input.is_empty() {
                match decoder.push(input) {
                    Ok(taken) => input = &input[taken..],
                    Err(_) => return Ok(()),
                }
                while let Some(frame) = decoder.pop() {
                    decode_any(frame);
                }
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A stream of frames cut at arbitrary points comes out of the decoder frame by frame.
    #[test]
    fn frame_decoder_reassembles_any_split(
        frames in prop::collection::vec(client_frame(), 1..6),
        cuts in prop::collection::vec(1usize..200, 1..20),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            frame.encode(&mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let size = (*cuts.next().unwrap()).min(rest.len());
            let mut input = &rest[..size];
            rest = &rest[size..];
            while !input.is_empty() {
                let taken = decoder.push(input).unwrap();
                input = &input[taken..];
                while let Some(frame) = decoder.pop() {
                    decoded.push(decode_client_frame(frame).unwrap());
                }
            }
        }
        prop_assert_eq!(decoder.buffered_bytes(), 0);
        prop_assert_eq!(decoded, frames.iter().map(ClientFrame::as_decoded).collect::<Vec<_>>());
    }

    /// A reply split by `encode_reply` reads back as the same results, in order, in parts
    /// that each fit a frame.
    #[test]
    fn encode_reply_round_trips(results in prop::collection::vec(operation_result(), 0..20)) {
        let mut out = Vec::new();
        let parts = encode_reply(9, 2, 77, &results, &mut out).unwrap();
        prop_assert_eq!(parts, 1);
        let ServerFrame::Reply(reply) = decode_server_frame(&out).unwrap() else { panic!("a reply") };
        prop_assert_eq!((reply.request_id, reply.epoch, reply.lsn, reply.first_operation, reply.is_final), (9, 2, 77, 0, true));
        prop_assert_eq!(reply.results, results);
    }

    /// The wire step never decides what the engine decides: validation only turns names and
    /// quantities into engine types, with the engine's own codes.
    #[test]
    fn to_action_agrees_with_the_engine_newtypes(operation in operation()) {
        match operation.to_action(TenantId(3)) {
            Ok(Action::Command(command)) => prop_assert_eq!(command.kind(), operation.kind().name()),
            Ok(Action::Query(_)) => prop_assert!(operation.kind().is_read_only() && !operation.kind().is_admin()),
            Ok(Action::Admin(action)) => {
                prop_assert!(operation.kind().is_admin());
                let kind = match action {
                    AdminAction::IssueToken { .. } => OperationKind::IssueToken,
                    AdminAction::IssueServiceToken { .. } => OperationKind::IssueServiceToken,
                    AdminAction::ListTenants => OperationKind::ListTenants,
                    AdminAction::TakeSnapshot => OperationKind::TakeSnapshot,
                    AdminAction::Status => OperationKind::Status,
                    AdminAction::Promote => OperationKind::Promote,
                };
                // take_snapshot and promote answer in the engine-reply shape; the others do not.
                prop_assert_eq!(
                    operation.kind().has_engine_reply(),
                    matches!(kind, OperationKind::TakeSnapshot | OperationKind::Promote)
                );
                prop_assert_eq!(kind, operation.kind());
            }
            Err(code) => prop_assert!((40..60).contains(&code.number()), "{:?} is an input code", code),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limits and examples.

#[test]
fn oversize_header_is_refused_before_buffering() {
    let mut decoder = FrameDecoder::new();
    let header = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
    let mut input = header.to_vec();
    input.extend_from_slice(&[0u8; 1_000]);
    let error = decoder.push(&input).unwrap_err();
    assert_eq!(error, WireError::FrameTooLarge { announced: FRAME_BYTES_MAX as u64 + 1 });
    assert_eq!(error.code(), ProtocolErrorCode::FrameTooLarge);
    assert!(decoder.buffered_bytes() <= FRAME_HEADER_BYTES, "nothing of the body was taken");
    assert_eq!(decoder.push(&[1, 2, 3]), Err(error), "the decoder stays failed");

    // Byte by byte: refused on the fourth header byte.
    let mut decoder = FrameDecoder::new();
    for byte in &header[..3] {
        assert_eq!(decoder.push(std::slice::from_ref(byte)), Ok(1));
    }
    assert!(decoder.push(&header[3..]).is_err());

    // Exactly FRAME_BYTES_MAX is accepted, and buffered only as it arrives.
    let mut decoder = FrameDecoder::new();
    assert_eq!(decoder.push(&(FRAME_BYTES_MAX as u32).to_le_bytes()), Ok(4));
    assert_eq!(decoder.push(&[frame_type::REQUEST; 10]), Ok(10));
    assert_eq!(decoder.buffered_bytes(), 14);
    assert!(decoder.pop().is_none());
    // And decoding the same announcement as a whole frame is refused too.
    assert_eq!(decode_client_frame(&input).unwrap_err().code(), ProtocolErrorCode::FrameTooLarge);
}

#[test]
fn counts_larger_than_the_frame_are_refused() {
    // A request announcing 1,000 operations in a 20-byte frame.
    let mut frame = Vec::new();
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.push(frame_type::REQUEST);
    frame.extend_from_slice(&5u64.to_le_bytes());
    frame.extend_from_slice(&1_000u16.to_le_bytes());
    frame.extend_from_slice(&[1, 0]);
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    let error = decode_client_frame(&frame).unwrap_err();
    assert!(matches!(error, WireError::CountOverBytes { count: 1_000, .. }), "{error:?}");
    assert!(error.closes_connection());

    // An import announcing u32::MAX rows: refused without allocating for them.
    let mut frame = vec![0, 0, 0, 0, frame_type::REQUEST];
    frame.extend_from_slice(&6u64.to_le_bytes());
    frame.extend_from_slice(&1u16.to_le_bytes());
    frame.push(OperationKind::Import.number());
    frame.extend_from_slice(&[2, b'o', b'p']);
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    let error = decode_client_frame(&frame).unwrap_err();
    assert!(matches!(error, WireError::CountOverBytes { count, .. } if count == u64::from(u32::MAX)), "{error:?}");

    // A token longer than TOKEN_BYTES_MAX.
    let mut frame = vec![0, 0, 0, 0, frame_type::HELLO, 1, 0, 1, 0];
    frame.extend_from_slice(&5_000u16.to_le_bytes());
    frame.extend_from_slice(&[b'x'; 5_000]);
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    assert!(matches!(decode_client_frame(&frame), Err(WireError::CountOverMax { .. })));
}

#[test]
fn request_level_errors_name_the_request_and_keep_the_connection() {
    // Too many operations: refused from the count, with the request id.
    let operations = vec![Operation::GetSku { sku: "a".into() }; OPERATIONS_PER_REQUEST_MAX + 1];
    let mut too_many = Vec::new();
    assert!(ClientFrame::Request(Request { request_id: 11, operations: operations.clone() })
        .encode(&mut too_many)
        .is_err());
    assert!(too_many.is_empty(), "a failed encode leaves the buffer as it was");
    let mut frame = vec![0, 0, 0, 0, frame_type::REQUEST];
    frame.extend_from_slice(&11u64.to_le_bytes());
    frame.extend_from_slice(&((OPERATIONS_PER_REQUEST_MAX + 1) as u16).to_le_bytes());
    for _ in 0..=OPERATIONS_PER_REQUEST_MAX {
        frame.extend_from_slice(&[OperationKind::GetSku.number(), 1, b'a']);
    }
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    let error = decode_client_frame(&frame).unwrap_err();
    assert_eq!(error, WireError::TooManyOperations { request_id: 11, count: OPERATIONS_PER_REQUEST_MAX + 1 });
    assert_eq!((error.request_id(), error.closes_connection()), (Some(11), false));

    // An unknown operation kind: the request is refused, the connection kept.
    let mut bytes = encode_client(&ClientFrame::Request(Request {
        request_id: 12,
        operations: vec![Operation::GetSku { sku: "a".into() }],
    }));
    bytes[4 + 1 + 8 + 2] = 99;
    let error = decode_client_frame(&bytes).unwrap_err();
    assert_eq!(error.code(), ProtocolErrorCode::UnknownOperation);
    assert_eq!((error.request_id(), error.closes_connection()), (Some(12), false));
    let answer = ErrorFrame::from_wire_error(&error);
    assert_eq!((answer.request_id, answer.code), (Some(12), ProtocolErrorCode::UnknownOperation));
    encode_server(&ServerFrame::Error(answer));

    // A server frame type sent by a client: unknown frame type, connection kept.
    let bytes = encode_server(&ServerFrame::Goodbye);
    let error = decode_client_frame(&bytes).unwrap_err();
    assert_eq!((error.code(), error.closes_connection()), (ProtocolErrorCode::UnknownFrameType, false));
}

#[test]
fn bad_names_are_per_operation_codes_not_malformed_frames() {
    let request = Request {
        request_id: 1,
        operations: vec![
            Operation::Receive { operation: "op-1".into(), sku: "S".repeat(65), location: "WH1".into(), quantity: 5 },
            Operation::Receive { operation: "op-2".into(), sku: "SKU".into(), location: "W H".into(), quantity: 5 },
            Operation::Receive { operation: "op-3".into(), sku: "SKU".into(), location: "WH1".into(), quantity: 0 },
            Operation::Reserve {
                reservation: "r".into(),
                ttl_ms: 60_000,
                allow_partial: false,
                lines: vec![WireLine { sku: "a".into(), location: "b".into(), quantity: 1 }; 65],
            },
            Operation::Import {
                operation: "".into(),
                rows: vec![WireImportRow {
                    sku: "a".into(),
                    location: "b".into(),
                    on_hand: 1,
                    safety_stock: None,
                    backorder_limit: None,
                }],
            },
            Operation::GetItem { sku: "".into(), location: "b".into() },
            Operation::Receive { operation: "op-4".into(), sku: "SKU".into(), location: "WH1".into(), quantity: 5 },
        ],
    };
    let ClientFrame::Request(decoded) = decode_client_frame(&encode_client(&ClientFrame::Request(request))).unwrap()
    else {
        panic!("a request")
    };
    let codes: Vec<Result<&'static str, ResultCode>> = decoded
        .operations
        .iter()
        .map(|operation| {
            operation.to_action(TenantId(0)).map(|action| match action {
                Action::Command(command) => command.kind(),
                Action::Query(_) => "query",
                Action::Admin(_) => "admin",
            })
        })
        .collect();
    assert_eq!(
        codes,
        [
            Err(ResultCode::NameTooLong),
            Err(ResultCode::NameNotPrintable),
            Err(ResultCode::QuantityNotPositive),
            Err(ResultCode::TooManyLines),
            Err(ResultCode::NameEmpty),
            Err(ResultCode::NameEmpty),
            Ok("receive"),
        ]
    );
    let refused = OperationResult::refused(OperationKind::GetItem, ResultCode::NameEmpty);
    assert_eq!(refused, OperationResult::Item(Err(ResultCode::NameEmpty)));
    assert_eq!(refused.code(), ResultCode::NameEmpty);
    let Ok(Action::Command(Command::Receive { quantity, .. })) = decoded.operations[6].to_action(TenantId(0)) else {
        panic!("a receive")
    };
    assert_eq!(quantity.get(), 5);
}

#[test]
fn large_replies_are_split_into_parts_that_fit() {
    let item = ItemState { sku: "S".repeat(64), location: "L".repeat(64), counters: Counters::default() };
    let page = OperationResult::Items(Ok(ItemPage { items: vec![item; 10_000], next_cursor: Some(1) }));
    let results = vec![page.clone(), OperationResult::refused(OperationKind::Receive, ResultCode::UnknownItem), page];
    let mut out = Vec::new();
    assert_eq!(encode_reply(4, 1, 10, &results, &mut out), Ok(2), "two full pages need two frames");
    let mut decoder = FrameDecoder::new();
    let mut input = &out[..];
    let mut parts = Vec::new();
    while !input.is_empty() {
        let taken = decoder.push(input).unwrap();
        input = &input[taken..];
        if let Some(frame) = decoder.pop() {
            assert!(frame.len() <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX);
            let ServerFrame::Reply(part) = decode_server_frame(frame).unwrap() else { panic!("a reply part") };
            parts.push(part);
        }
    }
    assert_eq!(
        parts.iter().map(|part| (part.first_operation, part.is_final)).collect::<Vec<_>>(),
        [(0, false), (2, true)]
    );
    let joined: Vec<OperationResult> = parts.into_iter().flat_map(|part| part.results).collect();
    assert_eq!(joined, results);
}

#[test]
fn the_largest_import_fits_a_frame() {
    let row = WireImportRow {
        sku: "S".repeat(64),
        location: "L".repeat(64),
        on_hand: 1,
        safety_stock: Some(1),
        backorder_limit: Some(1),
    };
    let request = ClientFrame::Request(Request {
        request_id: 1,
        operations: vec![Operation::Import { operation: "O".repeat(64), rows: vec![row; 10_000] }],
    });
    let mut out = Vec::new();
    request.encode(&mut out).unwrap();
    assert!(out.len() < FRAME_BYTES_MAX * 8 / 10, "{} bytes leave headroom", out.len());
}

#[test]
fn version_negotiation_picks_the_highest_common() {
    let hello = |version_min, version_max| Hello { version_min, version_max, token: Vec::new() };
    assert_eq!(negotiate_version(&hello(1, 1)), Some(1));
    assert_eq!(negotiate_version(&hello(0, 9)), Some(1));
    assert_eq!(negotiate_version(&hello(2, 9)), None);
    assert_eq!(negotiate_version(&hello(1, 0)), None);
}

#[test]
fn query_results_with_an_ok_partial_code_are_malformed() {
    let mut bytes = encode_server(&ServerFrame::Reply(ReplyFrame {
        request_id: 1,
        epoch: 1,
        lsn: 1,
        first_operation: 0,
        is_final: true,
        results: vec![OperationResult::Item(Err(ResultCode::UnknownItem))],
    }));
    let at = bytes.len() - 2;
    bytes[at..].copy_from_slice(&ResultCode::OkPartial.number().to_le_bytes());
    assert_eq!(decode_server_frame(&bytes).unwrap_err().code(), ProtocolErrorCode::MalformedFrame);
    // And an Err with an ok code cannot be encoded.
    let mut out = Vec::new();
    let frame = ServerFrame::Reply(ReplyFrame {
        request_id: 1,
        epoch: 1,
        lsn: 1,
        first_operation: 0,
        is_final: true,
        results: vec![OperationResult::Item(Err(ResultCode::Ok))],
    });
    assert_eq!(frame.encode(&mut out).unwrap_err().code(), ProtocolErrorCode::Internal);
    assert!(out.is_empty());
}

#[test]
fn issue_token_with_a_long_tenant_name_decodes_and_is_refused_by_to_action() {
    // 65 bytes: a well-formed `str` (the wire allows 255), one byte over NAME_BYTES_MAX.
    let long = "t".repeat(65);
    let request = ClientFrame::Request(Request {
        request_id: 21,
        operations: vec![
            Operation::IssueToken { tenant: long.clone(), revoke_others: true },
            Operation::IssueToken { tenant: "acme".into(), revoke_others: false },
        ],
    });
    let bytes = encode_client(&request);
    let ClientFrame::Request(decoded) = decode_client_frame(&bytes).expect("a 65-byte name is well-formed") else {
        panic!("a request")
    };
    assert_eq!(decoded.operations[0], Operation::IssueToken { tenant: long, revoke_others: true });
    assert_eq!(decoded.operations[0].to_action(TenantId(0)), Err(ResultCode::NameTooLong));
    // The next operation of the same request is unaffected.
    let Ok(Action::Admin(AdminAction::IssueToken { tenant, revoke_others: false })) =
        decoded.operations[1].to_action(TenantId(0))
    else {
        panic!("an issue_token action")
    };
    assert_eq!(tenant.as_str(), "acme");
    // And the server answers the refusal as that operation's result.
    let refused = OperationResult::refused(OperationKind::IssueToken, ResultCode::NameTooLong);
    assert_eq!(refused, OperationResult::Token(Err(ResultCode::NameTooLong)));
    assert_eq!((refused.kind(), refused.code()), (OperationKind::IssueToken, ResultCode::NameTooLong));
    let refused = OperationResult::refused(OperationKind::ListTenants, ResultCode::UnknownTenant);
    assert_eq!(refused, OperationResult::Tenants(Err(ResultCode::UnknownTenant)));

    // Other bad names get their own codes; a revoke_others byte other than 0 or 1 is malformed.
    for (tenant, code) in [("", ResultCode::NameEmpty), ("a b", ResultCode::NameNotPrintable)] {
        let operation = Operation::IssueToken { tenant: tenant.into(), revoke_others: false };
        assert_eq!(operation.to_action(TenantId(0)), Err(code));
    }
    let mut bad_flag = encode_client(&ClientFrame::Request(Request {
        request_id: 22,
        operations: vec![Operation::IssueToken { tenant: "acme".into(), revoke_others: true }],
    }));
    *bad_flag.last_mut().unwrap() = 2;
    assert!(matches!(decode_client_frame(&bad_flag), Err(WireError::BadValue { what: "revoke_others", .. })));
}

#[test]
fn issue_service_token_is_a_service_byte_and_a_flag_and_an_unknown_service_is_malformed() {
    for &service in Service::ALL {
        let request = ClientFrame::Request(Request {
            request_id: 24,
            operations: vec![Operation::IssueServiceToken { service, revoke_others: true }],
        });
        let bytes = encode_client(&request);
        // The operation is three bytes: kind 70, the service, the flag.
        assert_eq!(bytes.len(), FRAME_HEADER_BYTES + 1 + 8 + 2 + 3);
        assert_eq!(bytes[bytes.len() - 3..], [70, service.number(), 1]);
        assert_eq!(decode_client_frame(&bytes), Ok(request));
        assert_eq!(
            Operation::IssueServiceToken { service, revoke_others: false }.to_action(TenantId(0)),
            Ok(Action::Admin(AdminAction::IssueServiceToken { service, revoke_others: false }))
        );
    }
    let kind = OperationKind::IssueServiceToken;
    assert!(kind.is_admin() && !kind.is_read_only() && !kind.runs_on_standby() && !kind.has_engine_reply());
    let mut bad = encode_client(&ClientFrame::Request(Request {
        request_id: 25,
        operations: vec![Operation::IssueServiceToken { service: Service::Admin, revoke_others: false }],
    }));
    let service_at = bad.len() - 2;
    for number in [0u8, 3, 255] {
        bad[service_at] = number;
        assert!(
            matches!(decode_client_frame(&bad), Err(WireError::BadValue { what: "token service", value, .. }) if value == u64::from(number)),
            "service byte {number}"
        );
    }
    // Its result is a token like issue_token's, under its own kind.
    let refused = OperationResult::refused(kind, ResultCode::CapacityExceeded);
    assert_eq!(refused, OperationResult::ServiceToken(Err(ResultCode::CapacityExceeded)));
    assert_eq!(refused.kind(), kind);
}

#[test]
fn list_tenants_is_one_byte_and_fills_a_request() {
    // An operation without fields: a full request of them (one byte each) must not be taken
    // for a count larger than the frame.
    let request = ClientFrame::Request(Request {
        request_id: 23,
        operations: vec![Operation::ListTenants; OPERATIONS_PER_REQUEST_MAX],
    });
    let bytes = encode_client(&request);
    assert_eq!(bytes.len(), FRAME_HEADER_BYTES + 1 + 8 + 2 + OPERATIONS_PER_REQUEST_MAX);
    assert_eq!(decode_client_frame(&bytes), Ok(request));
    assert_eq!(Operation::ListTenants.to_action(TenantId(9)), Ok(Action::Admin(AdminAction::ListTenants)));
    assert!(OperationKind::ListTenants.is_read_only() && OperationKind::ListTenants.is_admin());
    assert!(!OperationKind::IssueToken.is_read_only() && OperationKind::IssueToken.is_admin());
}

#[test]
fn tenant_lists_are_bounded() {
    let reply = |results| {
        ServerFrame::Reply(ReplyFrame { request_id: 1, epoch: 1, lsn: 1, first_operation: 0, is_final: true, results })
    };
    // A full list of 64-byte names fits one frame.
    let entry = TenantEntry { name: "T".repeat(64), tokens: 3 };
    let full = OperationResult::Tenants(Ok(vec![entry.clone(); TENANTS_PER_LIST_MAX]));
    let bytes = encode_server(&reply(vec![full.clone()]));
    assert!(bytes.len() < FRAME_BYTES_MAX / 2, "{} bytes", bytes.len());
    assert_eq!(decode_server_frame(&bytes), Ok(reply(vec![full])));

    // One more entry cannot be encoded.
    let over = OperationResult::Tenants(Ok(vec![entry; TENANTS_PER_LIST_MAX + 1]));
    let mut out = Vec::new();
    assert_eq!(reply(vec![over]).encode(&mut out).unwrap_err().code(), ProtocolErrorCode::Internal);
    assert!(out.is_empty());

    // A count over the maximum, or over the bytes left, is refused before allocating.
    let empty = encode_server(&reply(vec![OperationResult::Tenants(Ok(Vec::new()))]));
    let count_at = empty.len() - 4;
    for (count, over_max) in [(TENANTS_PER_LIST_MAX as u32 + 1, true), (u32::MAX, true), (2, false)] {
        let mut bytes = empty.clone();
        bytes[count_at..].copy_from_slice(&count.to_le_bytes());
        let error = decode_server_frame(&bytes).unwrap_err();
        if over_max {
            assert!(matches!(error, WireError::CountOverMax { what: "tenants", .. }), "{error:?}");
        } else {
            assert!(matches!(error, WireError::CountOverBytes { what: "tenants", count: 2, .. }), "{error:?}");
        }
    }

    // A token result: an ok code and the token; a refusal is its code alone.
    let token = format!("rsv_{}", "0123456789abcdef".repeat(4));
    assert_eq!(token.len(), 68);
    let results = vec![
        OperationResult::Token(Ok(token)),
        OperationResult::Token(Err(ResultCode::UnknownTenant)),
        OperationResult::Tenants(Err(ResultCode::NameEmpty)),
    ];
    let bytes = encode_server(&reply(results.clone()));
    assert_eq!(decode_server_frame(&bytes), Ok(reply(results)));
    // A token over STRING_BYTES_MAX cannot be encoded.
    let mut out = Vec::new();
    let long = reply(vec![OperationResult::Token(Ok("x".repeat(256)))]);
    assert_eq!(long.encode(&mut out).unwrap_err().code(), ProtocolErrorCode::Internal);
    // And an engine reply cannot stand for a credential operation's result.
    let wrong =
        reply(vec![OperationResult::Reply { kind: OperationKind::IssueToken, reply: Reply::code(ResultCode::Ok) }]);
    assert_eq!(wrong.encode(&mut out).unwrap_err().code(), ProtocolErrorCode::Internal);
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Replication messages (docs/protocol.md, "Replication").

mod replication_messages {
    use proptest::prelude::*;
    use reservoir_engine::epoch::EPOCH_MAX;
    use reservoir_engine::EPOCH_FIRST;
    use reservoir_net::replication::wire::{PrimaryMessage, StandbyMessage, EPOCHS_SENT_MAX};
    use reservoir_net::ProtocolErrorCode;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9.:]{0,40}"
    }

    /// An epoch history: epochs above the first and their first LSNs, both ascending.
    fn epoch_history() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop_oneof![
            prop::collection::vec((1..1u64 << 20, 1..1u64 << 40), 0..4),
            prop::collection::vec((1..1u64 << 20, 1..1u64 << 40), EPOCHS_SENT_MAX..=EPOCHS_SENT_MAX),
        ]
        .prop_map(|steps| {
            let (mut epoch, mut lsn) = (EPOCH_FIRST, 0);
            steps
                .into_iter()
                .map(|(epoch_step, lsn_step)| {
                    (epoch, lsn) = (epoch + epoch_step, lsn + lsn_step);
                    (epoch, lsn)
                })
                .collect()
        })
    }

    fn start(epoch: u64, epochs: Vec<(u64, u64)>, epochs_complete: bool) -> Vec<u8> {
        let message =
            StandbyMessage::Start { next_lsn: 9, history: 7, epoch, epochs, epochs_complete, name: "n".into() };
        // Encoded by hand: `encode` asserts what the decoder is to refuse.
        let StandbyMessage::Start { next_lsn, history, epoch, epochs, epochs_complete, name } = message else {
            unreachable!()
        };
        let mut body = vec![0x21];
        for value in [next_lsn, history, epoch] {
            body.extend_from_slice(&value.to_le_bytes());
        }
        body.extend_from_slice(&(epochs.len() as u16).to_le_bytes());
        for (epoch, lsn) in epochs {
            body.extend_from_slice(&epoch.to_le_bytes());
            body.extend_from_slice(&lsn.to_le_bytes());
        }
        body.push(u8::from(epochs_complete));
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body
    }

    /// A `Start` whose epoch history could not be a log's is refused at decoding (the primary
    /// compares it with its own, and asserts its order there).
    #[test]
    fn a_start_with_a_history_no_log_could_have_is_refused() {
        assert!(StandbyMessage::decode(&start(5, vec![(3, 4), (5, 8)], true)).is_ok(), "the hand encoding is right");
        let refused = |epoch, epochs: Vec<(u64, u64)>, complete| {
            let decoded = StandbyMessage::decode(&start(epoch, epochs.clone(), complete));
            assert!(decoded.is_err(), "{epoch} {epochs:?} {complete}: {decoded:?}");
        };
        refused(5, vec![(5, 8), (3, 4)], true);
        refused(5, vec![(3, 8), (5, 8)], true);
        refused(3, vec![(3, 4), (5, 8)], true);
        refused(1, vec![(1, 4)], true);
        refused(5, vec![(5, 0)], true);
        refused(5, vec![(5, 8)], false);
        refused(1 << 32, vec![(1 << 32, 8)], true);
        refused(5, vec![(5, 9)], true);
        // ... past the standby's log: `start` says it holds LSN 1..=8.
        assert!(StandbyMessage::decode(&start(5, vec![(5, 8)], true)).is_ok());
        let too_many: Vec<(u64, u64)> = (0..=EPOCHS_SENT_MAX as u64).map(|index| (index + 2, index + 2)).collect();
        refused(too_many.last().unwrap().0, too_many, false);
    }

    /// A `Fence` or `Fenced` naming an epoch no promotion can reach does not decode (it would
    /// pin the highest epoch a node has heard of).
    #[test]
    fn a_fence_past_the_highest_epoch_is_refused() {
        for (message_type, epoch, accepted) in
            [(0x23u8, EPOCH_MAX, true), (0x23, EPOCH_MAX + 1, false), (0xA9, EPOCH_MAX + 1, false)]
        {
            let mut body = vec![message_type];
            body.extend_from_slice(&epoch.to_le_bytes());
            body.push(0);
            let decoded = if message_type == 0x23 {
                StandbyMessage::decode(&body).map(|_| ())
            } else {
                PrimaryMessage::decode(&body).map(|_| ())
            };
            assert_eq!(decoded.is_ok(), accepted, "type {message_type:#x} epoch {epoch}: {decoded:?}");
        }
    }

    fn standby_message() -> impl Strategy<Value = StandbyMessage> {
        prop_oneof![
            (0..1u64 << 60, any::<u64>(), epoch_history(), any::<bool>(), name()).prop_map(
                |(next_lsn, history, epochs, complete, name)| {
                    let epoch = epochs.last().map_or(EPOCH_FIRST, |&(epoch, _)| epoch);
                    // Its epochs began at records it holds.
                    let next_lsn = next_lsn.max(epochs.last().map_or(0, |&(_, lsn)| lsn + 1));
                    // Only a full-size list may be a tail.
                    let epochs_complete = complete || epochs.len() < EPOCHS_SENT_MAX;
                    StandbyMessage::Start { next_lsn, history, epoch, epochs, epochs_complete, name }
                }
            ),
            (any::<u64>(), any::<u64>())
                .prop_map(|(written_lsn, applied_lsn)| StandbyMessage::Feedback { written_lsn, applied_lsn }),
            (0..=EPOCH_MAX, name()).prop_map(|(epoch, primary)| StandbyMessage::Fence { epoch, primary }),
            any::<u64>().prop_map(|generation| StandbyMessage::CredentialsStored { generation }),
        ]
    }

    fn primary_message() -> impl Strategy<Value = PrimaryMessage> {
        let bytes = prop::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(epoch, history, durable_lsn)| PrimaryMessage::Accept { epoch, history, durable_lsn }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(keep_through, epoch)| PrimaryMessage::Rewind { keep_through, epoch }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(covers_lsn, bytes)| PrimaryMessage::BaseBackup { covers_lsn, bytes }),
            bytes.clone().prop_map(|bytes| PrimaryMessage::SnapshotChunk { bytes }),
            (any::<u64>(), any::<u64>(), bytes.clone()).prop_map(|(durable_lsn, now_ms, frames)| PrimaryMessage::Wal {
                durable_lsn,
                now_ms,
                frames
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(durable_lsn, now_ms)| PrimaryMessage::Heartbeat { durable_lsn, now_ms }),
            (any::<u64>(), bytes).prop_map(|(generation, json)| PrimaryMessage::Credentials { generation, json }),
            (prop::sample::select(ProtocolErrorCode::ALL), "[ -~]{0,40}", proptest::option::of(name()))
                .prop_map(|(code, message, primary)| PrimaryMessage::Refused { code, message, primary }),
            (0..=EPOCH_MAX, name()).prop_map(|(epoch, primary)| PrimaryMessage::Fenced { epoch, primary }),
        ]
    }

    proptest! {
        #[test]
        fn standby_messages_round_trip(message in standby_message()) {
            let mut bytes = Vec::new();
            message.encode(&mut bytes).unwrap();
            prop_assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
            prop_assert_eq!(StandbyMessage::decode(&bytes[4..]).unwrap(), message);
        }

        #[test]
        fn primary_messages_round_trip(message in primary_message()) {
            let mut bytes = Vec::new();
            message.encode(&mut bytes).unwrap();
            prop_assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
            prop_assert_eq!(PrimaryMessage::decode(&bytes[4..]).unwrap(), message);
        }

        /// Any bytes: an error or a message, never a panic, never a huge allocation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = StandbyMessage::decode(&bytes);
            let _ = PrimaryMessage::decode(&bytes);
        }
    }
}

/// Regression (review, eleventh session): the decoder reserved room for every row or line the
/// count announced, though no more than `IMPORT_ROWS_MAX` (`LINES_PER_RESERVATION_MAX`) can
/// run: a 2 MiB frame of ~170 k empty import rows reserved ~15 MB before the conversion
/// refused it. Past one more than the maximum, rows and lines are now read and dropped; the
/// operation is still refused `too_many_rows` (`too_many_lines`).
#[test]
fn rows_and_lines_past_their_maximum_are_read_but_not_kept() {
    let row = WireImportRow {
        sku: String::new(),
        location: String::new(),
        on_hand: 0,
        safety_stock: None,
        backorder_limit: None,
    };
    let line = WireLine { sku: String::new(), location: String::new(), quantity: 1 };
    let rows_announced = 100_000;
    let request = Request {
        request_id: 1,
        operations: vec![
            Operation::Import { operation: "big".into(), rows: vec![row; rows_announced] },
            Operation::Reserve {
                reservation: "r".into(),
                ttl_ms: 60_000,
                allow_partial: false,
                lines: vec![line; 60_000],
            },
        ],
    };
    let bytes = encode_client(&ClientFrame::Request(request));
    assert!(bytes.len() <= FRAME_BYTES_MAX, "{} bytes", bytes.len());
    let ClientFrame::Request(decoded) = decode_client_frame(&bytes).unwrap() else { panic!("a request") };
    let Operation::Import { rows, .. } = &decoded.operations[0] else { panic!("an import") };
    assert_eq!(rows.len(), reservoir_engine::IMPORT_ROWS_MAX + 1);
    assert!(rows.capacity() <= reservoir_engine::IMPORT_ROWS_MAX + 1, "{}", rows.capacity());
    let Operation::Reserve { lines, .. } = &decoded.operations[1] else { panic!("a reserve") };
    assert_eq!(lines.len(), reservoir_engine::LINES_PER_RESERVATION_MAX + 1);
    assert!(lines.capacity() <= reservoir_engine::LINES_PER_RESERVATION_MAX + 1, "{}", lines.capacity());
    assert!(matches!(decoded.operations[0].to_action(TenantId(0)), Err(ResultCode::TooManyRows)));
    assert!(matches!(decoded.operations[1].to_action(TenantId(0)), Err(ResultCode::TooManyLines)));
}
