// Weight storage, shared by the kernels that read weight matrices (matmul, gemv_subgroup,
// embedding, slstm_cell); the registry appends this file to each.
// WDT (override): 0 = f32 bits; 1 = f16 and 2 = bf16, pairs packed in u32 (element 2i in
// the low half). bf16 is the top half of an f32, so a shift unpacks it exactly and needs no
// feature; f16 needs unpack2x16float.
override WDT: u32 = 0u;

// The two 16-bit weights packed in `word` (WDT 1 or 2).
fn unpack_pair(word: u32) -> vec2<f32> {
    if WDT == 2u {
        return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
    }
    return unpack2x16float(word);
}
