//! The built program against the ABI table in `filter_common::abi`: the
//! object's maps (names, types, key and value sizes) are exactly the table's,
//! its embedded layout version is filter-common's, and the maps the kernel
//! creates from it have the same shape. Mirrors `filter-ebpf/src/maps.rs`.

use std::collections::BTreeSet;

use aya::maps::MapData;
use filter_common::abi::{self, LAYOUT_VERSION, MAPS, MapType, maps};
use filter_ctl::abi::{AbiError, ObjectAbi, ObjectMap, check, check_object, read_object};
use filter_tests::progtest::{ProgTest, skip_unless_root};

fn built() -> ObjectAbi {
    read_object(filter_ctl::EBPF_OBJECT)
        .unwrap_or_else(|e| panic!("reading the embedded eBPF object: {e}"))
}

fn shape(map: &ObjectMap) -> (u32, u32, u32) {
    (map.map_type, map.key_size, map.value_size)
}

#[test]
fn the_object_embeds_the_layout_version() {
    assert_eq!(built().layout_version, LAYOUT_VERSION);
}

#[test]
fn every_map_of_the_object_matches_the_table() {
    for map in &built().maps {
        let expected = abi::map(&map.name).unwrap_or_else(|| {
            panic!(
                "map {} is in the object but not in filter_common::abi::MAPS",
                map.name
            )
        });
        assert_eq!(
            shape(map),
            (
                expected.map_type.raw(),
                expected.key_size,
                expected.value_size
            ),
            "map {}: (type, key size, value size) in the object vs the table",
            map.name
        );
    }
}

#[test]
fn the_table_covers_every_map_of_the_object() {
    let object = built();
    let in_object: Vec<&str> = object.maps.iter().map(|m| m.name.as_str()).collect();
    let unique: BTreeSet<&str> = in_object.iter().copied().collect();
    assert_eq!(
        unique.len(),
        in_object.len(),
        "a map defined twice: {in_object:?}"
    );
    let in_table: BTreeSet<&str> = MAPS.iter().map(|m| m.name).collect();
    assert_eq!(
        unique, in_table,
        "maps of the object vs filter_common::abi::MAPS"
    );
    assert_eq!(in_table.len(), MAPS.len(), "a name twice in the table");
}

#[test]
fn the_ring_buffer_has_its_default_size() {
    let object = built();
    let events = object
        .maps
        .iter()
        .find(|m| m.name == maps::EVENTS)
        .expect("EVENTS in the object");
    assert_eq!(events.map_type, MapType::RingBuf.raw());
    assert_eq!(events.max_entries, filter_common::capacity::EVENTS_BYTES);
}

#[test]
fn maps_all_lists_the_table_in_order() {
    let names: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
    assert_eq!(maps::ALL.as_slice(), names.as_slice());
}

#[test]
fn check_object_accepts_the_embedded_program() {
    check_object().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn check_reports_each_kind_of_difference() {
    let good = built();
    check(&good).unwrap_or_else(|e| panic!("{e}"));

    let mut old = good.clone();
    old.layout_version = LAYOUT_VERSION - 1;
    assert!(
        matches!(check(&old), Err(AbiError::Version { object, expected })
            if object == LAYOUT_VERSION - 1 && expected == LAYOUT_VERSION),
        "{:?}",
        check(&old)
    );

    let mut resized = good.clone();
    let buckets = resized
        .maps
        .iter_mut()
        .find(|m| m.name == maps::BUCKETS)
        .expect("BUCKETS in the object");
    buckets.value_size += 8;
    assert!(
        matches!(check(&resized), Err(AbiError::Mismatch { ref name, .. }) if name == maps::BUCKETS),
        "{:?}",
        check(&resized)
    );

    let mut shrunk = good.clone();
    shrunk
        .maps
        .iter_mut()
        .find(|m| m.name == maps::RULES)
        .expect("RULES in the object")
        .max_entries = filter_common::MAX_RULES;
    assert!(
        matches!(check(&shrunk), Err(AbiError::Entries { ref name, found, expected })
            if name == maps::RULES && found == filter_common::MAX_RULES
                && expected == filter_common::RULE_SLOTS),
        "{:?}",
        check(&shrunk)
    );

    let mut retyped = good.clone();
    retyped
        .maps
        .iter_mut()
        .find(|m| m.name == maps::STATS)
        .expect("STATS in the object")
        .map_type = MapType::Array.raw();
    assert!(
        matches!(check(&retyped), Err(AbiError::Mismatch { ref name, .. }) if name == maps::STATS),
        "{:?}",
        check(&retyped)
    );

    let mut fewer = good.clone();
    fewer.maps.retain(|m| m.name != maps::EVENTS);
    assert!(
        matches!(check(&fewer), Err(AbiError::Missing(name)) if name == maps::EVENTS),
        "{:?}",
        check(&fewer)
    );

    let mut more = good;
    more.maps.push(ObjectMap {
        name: ".rodata".into(),
        map_type: MapType::Array.raw(),
        key_size: 4,
        value_size: 8,
        max_entries: 1,
    });
    assert!(
        matches!(check(&more), Err(AbiError::Unlisted(ref name)) if name == ".rodata"),
        "{:?}",
        check(&more)
    );
}

/// What the kernel created from the object (pinned maps) has the table's shape.
#[test]
fn loaded_maps_have_the_table_shape() {
    if skip_unless_root("loaded_maps_have_the_table_shape") {
        return;
    }
    let test = ProgTest::new();
    for expected in &MAPS {
        let path = test.pins().map(expected.name);
        let map =
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let info = map
            .info()
            .unwrap_or_else(|e| panic!("{}: reading the map's info: {e}", expected.name));
        let map_type = info
            .map_type()
            .unwrap_or_else(|e| panic!("{}: unknown map type: {e}", expected.name));
        assert_eq!(
            (map_type as u32, info.key_size(), info.value_size()),
            (
                expected.map_type.raw(),
                expected.key_size,
                expected.value_size
            ),
            "map {}: (type, key size, value size) in the kernel vs the table",
            expected.name
        );
        if expected.entries != 0 {
            assert_eq!(
                info.max_entries(),
                expected.entries,
                "map {}: entries in the kernel vs the table",
                expected.name
            );
        }
    }
}
