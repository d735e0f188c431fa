//! Fuzz targets for the hub's client-frame parser (`ClientFrame::parse`), the `data` depth
//! check (`check_depth`) and channel names. Fixed cases in `cargo test`;
//! `TETHER_FUZZ_ITERS=N` for a longer run (docs/fuzz.md).
//!
//! Every text frame a client sends goes through these; any text must become a frame or a
//! `ProtocolError`, and the depth check, which scans raw bytes instead of parsing, must agree
//! with a real parse of the value on every input.

use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tether_hub::protocol::{
    check_depth, ChannelName, ClientFrame, MAX_CHANNEL_LEN, MAX_DATA_DEPTH,
};
use tether_testkit::fuzz;

const FRAMES: &[&[u8]] = &[
    br#"{"type":"subscribe","channel":"news"}"#,
    br#"{"type":"subscribe","channel":"room:1.a-b_c","since":1700000000000042}"#,
    br#"{"type":"unsubscribe","channel":"news"}"#,
    br#"{"type":"publish","channel":"news","data":{"text":"hi ]}[{","n":[1,2.5e3,-0,null,true,{"x":"\"\\"}]},"id":7}"#,
    br#"{"type":"publish","channel":"c","data":null,"id":"a"}"#,
    br#"{"type":"ping","id":{"k":[1]}}"#,
    br#"  {"id":1,"data":[[[["\u005d"]]]],"channel":"x","type":"publish"}  "#,
];

const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"[[[[[[[[[[[[[[[[",
    b"]]]]]]]]]]]]]]]]",
    b"\"",
    b"\\",
    b"\\\"",
    b"\\u0000",
    b"\\ud800",
    b",",
    b":",
    b"null",
    b"1e999",
    b"-",
    b"\"type\":\"publish\",",
    b"\"data\":",
    b"\"since\":",
    b"\"channel\":\"",
    b"\"id\":",
    b"\xff",
    b"\xc3\xa9",
];

/// The nesting depth serde_json walks through when it parses a value (a scalar is 0, `[]`
/// is 1), duplicate keys included: a `Value` would keep only the last of them.
struct Depth(usize);

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DepthVisitor)
    }
}

struct DepthVisitor;

impl<'de> Visitor<'de> for DepthVisitor {
    type Value = Depth;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_str<E>(self, _: &str) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_unit<E>(self) -> Result<Depth, E> {
        Ok(Depth(0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Depth, A::Error> {
        let mut deepest = 0;
        while let Some(Depth(d)) = seq.next_element()? {
            deepest = deepest.max(d);
        }
        Ok(Depth(deepest + 1))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Depth, A::Error> {
        let mut deepest = 0;
        while let Some((IgnoredAny, Depth(d))) = map.next_entry()? {
            deepest = deepest.max(d);
        }
        Ok(Depth(deepest + 1))
    }
}

/// The depth check against a real parse, where serde_json can parse it (up to its own limit
/// of 128 levels).
fn check_depth_agrees(data: &RawValue) -> Result<(), TestCaseError> {
    if let Ok(Depth(depth)) = serde_json::from_str::<Depth>(data.get()) {
        prop_assert_eq!(
            check_depth(data).is_err(),
            depth > MAX_DATA_DEPTH,
            "depth {} of {}",
            depth,
            data.get()
        );
    } else {
        let _ = check_depth(data);
    }
    Ok(())
}

/// A JSON value nested `levels` deep through arrays and objects, with siblings that are
/// strings full of brackets, quotes and escapes (which must not count).
fn nested() -> impl Strategy<Value = (String, usize)> {
    let sibling = proptest::option::of(r#"[\[\]{}"\\a-z ]{0,8}"#);
    proptest::collection::vec((any::<bool>(), sibling), 0..=MAX_DATA_DEPTH + 12).prop_map(
        |levels| {
            let mut text = String::from("0");
            for (array, sibling) in levels.iter().rev() {
                let sibling = sibling
                    .as_ref()
                    .map(|s| serde_json::to_string(s).expect("a string serialises"));
                text = match (array, sibling) {
                    (true, None) => format!("[{text}]"),
                    (true, Some(s)) => format!("[{s},{text},{s}]"),
                    (false, None) => format!(r#"{{"k":{text}}}"#),
                    // The sibling as a key too ("_" keeps it apart from "k").
                    (false, Some(s)) => {
                        let key = serde_json::to_string(&format!("_{}", &s[1..s.len() - 1]))
                            .expect("a string serialises");
                        format!(r#"{{{key}:{s},"k":{text}}}"#)
                    }
                };
            }
            (text, levels.len())
        },
    )
}

#[test]
fn every_corpus_frame_parses() {
    for frame in FRAMES {
        let text = std::str::from_utf8(frame).unwrap();
        if let Err(e) = ClientFrame::parse(text) {
            panic!("{text}: {e:?}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config(5000))]

    /// Any text is a frame or a protocol error; published `data` goes through the depth check,
    /// which agrees with a real parse.
    #[test]
    fn any_text_frame_parses_or_is_refused_with_a_code(input in fuzz::mutated(FRAMES, DICT, 8)) {
        let text = String::from_utf8_lossy(&input);
        match ClientFrame::parse(&text) {
            Ok(ClientFrame::Publish { channel, data, .. }) => {
                check_depth_agrees(&data)?;
                let _ = ChannelName::parse(&channel);
            }
            Ok(ClientFrame::Subscribe { channel, .. } | ClientFrame::Unsubscribe { channel }) => {
                let _ = ChannelName::parse(&channel);
            }
            Ok(ClientFrame::Ping { .. } | ClientFrame::Connect { .. } | ClientFrame::Refresh { .. }) => {}
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }

    /// Brackets inside strings never count; the limit is exactly `MAX_DATA_DEPTH`.
    #[test]
    fn the_depth_check_counts_exactly_the_nesting((text, levels) in nested()) {
        let data = RawValue::from_string(text.clone()).expect("generated JSON is valid");
        prop_assert_eq!(check_depth(&data).is_err(), levels > MAX_DATA_DEPTH, "{}", text);
        check_depth_agrees(&data)?;
    }

    /// A channel name is accepted only when it is 1 to 128 bytes of the plain set.
    #[test]
    fn channel_names_accept_exactly_the_plain_set(name in r"[a-zA-Z0-9_.:#,\-]{0,130}|\PC{0,8}") {
        let plain = !name.is_empty()
            && name.len() <= MAX_CHANNEL_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:#,".contains(&b));
        prop_assert_eq!(ChannelName::parse(&name).is_ok(), plain, "{:?}", name);
    }
}
