//! A safetensors header that the `safetensors` crate refuses, examined entry by entry, so
//! that the error names the tensor and field at fault with what was expected and what was
//! found (the crate's own errors name no tensor, or the neighbour where a mismatch shows).

use safetensors::Dtype;
use serde_json::Value;

/// What is wrong with the header of safetensors `file` (8-byte length, JSON, data), when a
/// tensor entry can be blamed; None when the problem is elsewhere (the length field, the
/// JSON syntax).
pub(crate) fn diagnose(file: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    let header: Value = serde_json::from_slice(file.get(8..end)?).ok()?;
    let data_len = (file.len() - end) as u128;
    let Value::Object(entries) = header else {
        return Some("corrupt header: not a JSON object of tensors".into());
    };
    let mut spans: Vec<(u128, u128, &str)> = Vec::new();
    for (name, entry) in &entries {
        if name == "__metadata__" {
            if !entry
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string))
            {
                return Some("corrupt header: __metadata__ must map names to strings".into());
            }
            continue;
        }
        let field = |f: &str| entry.get(f);
        let blame = |what: String| Some(format!("corrupt header: tensor '{name}': {what}"));
        let Some(dtype) = field("dtype") else {
            return blame("no dtype".into());
        };
        let Ok(parsed) = serde_json::from_value::<Dtype>(dtype.clone()) else {
            return blame(format!("unknown dtype {dtype}"));
        };
        let Some(shape) = field("shape").and_then(naturals) else {
            return blame(format!(
                "shape must be a list of non-negative integers, got {}",
                field("shape").unwrap_or(&Value::Null)
            ));
        };
        let offsets = field("data_offsets").and_then(naturals);
        let Some(&[begin, stop]) = offsets.as_deref() else {
            return blame(format!(
                "data_offsets must be two non-negative integers [begin, end], got {}",
                field("data_offsets").unwrap_or(&Value::Null)
            ));
        };
        if begin > stop {
            return blame(format!(
                "data_offsets [{begin}, {stop}] end before they begin"
            ));
        }
        let bits = shape
            .iter()
            .try_fold(parsed.bitsize() as u128, |n, &d| n.checked_mul(d));
        match bits {
            Some(bits) if bits % 8 != 0 => {
                return blame(format!(
                    "shape {shape:?} of {parsed:?} ({} bits each) is {bits} bits, not whole \
                     bytes",
                    parsed.bitsize()
                ))
            }
            Some(bits) if bits.div_ceil(8) == stop - begin => {}
            Some(bits) => {
                return blame(format!(
                    "shape {shape:?} of {parsed:?} needs {} bytes, its data_offsets [{begin}, \
                     {stop}] hold {}",
                    bits.div_ceil(8),
                    stop - begin
                ))
            }
            None => return blame(format!("shape {shape:?} is too large")),
        }
        spans.push((begin, stop, name));
    }
    spans.sort_unstable();
    let mut at = 0;
    let mut previous: Option<&str> = None;
    for (begin, stop, name) in spans {
        if begin != at {
            let after = match previous {
                Some(p) => format!("the previous tensor '{p}' ends at byte {at}"),
                None => "the data starts at byte 0".into(),
            };
            return Some(format!(
                "corrupt header: tensor '{name}' starts at byte {begin} of the data, but {after} \
                 (tensors must follow one another without gaps or overlaps)"
            ));
        }
        at = stop;
        previous = Some(name);
    }
    (at != data_len).then(|| {
        format!(
            "truncated or corrupt: the header's tensors end at byte {at} of the data, but the \
             file holds {data_len} bytes of data after its header"
        )
    })
}

/// A JSON list of non-negative integers.
fn naturals(v: &Value) -> Option<Vec<u128>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().map(u128::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::diagnose;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header.as_bytes());
        f.extend(vec![0u8; data]);
        f
    }

    #[test]
    fn names_the_tensor_and_field_at_fault() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}"#;
        assert_eq!(diagnose(&file(ok, 14)), None);
        let cases = [
            (
                ok.replace("[3]", "[257]"),
                "'b': shape [257] of F16 needs 514 bytes",
            ),
            (
                ok.replace("\"F16\"", "\"F17\""),
                "'b': unknown dtype \"F17\"",
            ),
            (ok.replace("[3]", "[-3]"), "'b': shape must be"),
            (
                ok.replace("[8,14]", "[14,8]"),
                "'b': data_offsets [14, 8] end before",
            ),
            (ok.replace("[8,14]", "[8]"), "'b': data_offsets must be"),
            (ok.replace("[2]", "[4611686018427387904, 4]"), "'a': shape"),
            (
                ok.replace(r#""F16","shape":[3]"#, r#""F6_E2M3","shape":[3]"#),
                "'b': shape [3] of F6_E2M3 (6 bits each) is 18 bits, not whole bytes",
            ),
        ];
        for (header, want) in cases {
            let got = diagnose(&file(&header, 14)).unwrap_or_default();
            assert!(got.contains(want), "{header}: {got}");
        }
        let gap = ok.replace("[8,14]", "[10,16]");
        let got = diagnose(&file(&gap, 16)).unwrap();
        assert!(
            got.contains("'b' starts at byte 10") && got.contains("'a' ends at byte 8"),
            "{got}"
        );
        // Stored out of order is fine; overlapping is not.
        let swapped = ok.replace("[0,8]", "[6,14]").replace("[8,14]", "[0,6]");
        assert_eq!(diagnose(&file(&swapped, 14)), None);
        let overlap = ok.replace("[8,14]", "[6,12]");
        let got = diagnose(&file(&overlap, 12)).unwrap();
        assert!(got.contains("'b' starts at byte 6"), "{got}");
        let got = diagnose(&file(ok, 20)).unwrap();
        assert!(
            got.contains("end at byte 14") && got.contains("holds 20 bytes"),
            "{got}"
        );
    }
}
