
// ---- Prelude: pure helpers shared by several kernel families (the host appends this file to
// each module that lists it in `shader!`; WGSL has no includes, and functions may be declared
// after their callers). WGSL has no overloading of user functions: each helper comes in an f32
// and a vec4<f32> form. ----

// σ(v) = 1 / (1 + e^−v).
fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

fn sigmoid4(v: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-v));
}

// SiLU(v) = v·σ(v), written v / (1 + e^−v) as PyTorch computes it.
fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn silu4(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-v));
}

// SiLU'(z) = σ(z)·(1 + z·(1 − σ(z))).
fn silu_derivative(z: f32) -> f32 {
    let s = sigmoid(z);
    return s * (1.0 + z * (1.0 - s));
}

fn silu_derivative4(z: vec4<f32>) -> vec4<f32> {
    let s = sigmoid4(z);
    return s * (1.0 + z * (1.0 - s));
}

// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, under three f32 ulps of 1): WGSL has
// no erf builtin.
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-x * x));
}

// GELU(x) = x·Φ(x) = x·(1 + erf(x/√2))/2, the exact form (PyTorch's default, diffusers' GEGLU).
fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

// GELU'(x) = Φ(x) + x·φ(x).
fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_approx(x * 0.70710678118654752));
    return cdf + x * 0.39894228040143268 * exp(-0.5 * x * x);
}

// CLIP's quick_gelu(x) = x·σ(1.702·x).
fn quick_gelu(x: f32) -> f32 {
    return x * sigmoid(1.702 * x);
}

// quick_gelu'(x) = σ(1.702x)·(1 + 1.702·x·(1 − σ(1.702x))).
fn quick_gelu_derivative(x: f32) -> f32 {
    let s = sigmoid(1.702 * x);
    return s * (1.0 + 1.702 * x * (1.0 - s));
}
