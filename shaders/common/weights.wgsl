// Weight storage, shared by the kernels that read weight matrices (matmul, gemv_subgroup,
// embedding, slstm_cell); the registry appends this file to each.
// WDT (override): 0 = f32 bits; 1 = f16 and 2 = bf16, pairs packed in u32 (element 2i in
// the low half); 3 = q8 and 4 = q4 (src/quant.rs): quantised data in u32 words with one
// scale word per block of 32 weights in a second binding. bf16 is the top half of an f32,
// so a shift unpacks it exactly and needs no feature; f16 needs unpack2x16float; the
// quantised formats need integer shifts only.
override WDT: u32 = 0u;

// The two 16-bit weights packed in `word` (WDT 1 or 2).
fn unpack_pair(word: u32) -> vec2<f32> {
    if WDT == 2u {
        return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
    }
    return unpack2x16float(word);
}

// q8: the four int8 weights of `word` (element i in byte i) times their block's scale (the
// f32 bits of the scale word).
fn dequant_q8(word: u32, scale: u32) -> vec4<f32> {
    let bytes = vec4<u32>(word << 24u, word << 16u, word << 8u, word);
    return vec4<f32>(bitcast<vec4<i32>>(bytes) >> vec4<u32>(24u)) * bitcast<f32>(scale);
}

// q4: the eight 4-bit weights of `word` (element i < 4 in the low nibble of byte i, 4 + i in
// its high nibble), q * scale + min with the block's bf16 scale (low half of `sm`) and min
// (high half).
fn dequant_q4(word: u32, sm: u32) -> array<vec4<f32>, 2> {
    let scale = bitcast<f32>(sm << 16u);
    let lo = bitcast<f32>(sm & 0xffff0000u);
    let q = vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u);
    return array<vec4<f32>, 2>(
        vec4<f32>(q & vec4<u32>(15u)) * scale + lo,
        vec4<f32>((q >> vec4<u32>(4u)) & vec4<u32>(15u)) * scale + lo,
    );
}

// Weight e of a quantised matrix whose data words are `word` = data[e / (32 / bits)] and
// whose block scale word is `scale` (one weight at a time: lookups, not products).
fn dequant_one(word: u32, e: u32, scale: u32) -> f32 {
    if WDT == 3u {
        return dequant_q8(word, scale)[e % 4u];
    }
    let i = e % 8u;
    return dequant_q4(word, scale)[i / 4u][i % 4u];
}
