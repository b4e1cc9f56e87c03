//! Router telemetry of one MoE layer for one step, as read back from the GPU
//! ([`MoeStep::read_telemetry`](super::moe::MoeStep::read_telemetry)): per token the
//! difficulty d_t, the normalised router entropy H~_t, the router probabilities and the
//! chosen experts with their weights; per layer the group shares, expert token counts and
//! loads, and the four auxiliary losses of MODEL.md section 3 (means over the step's tokens).

use std::fmt;

use crate::ops::router_stats::RouterSummary;

/// Names of [`RouterTelemetry::losses`], in order.
pub const LOSS_NAMES: [&str; 4] = ["L_d", "L_g", "L_z", "L_lb"];

/// What one MoE layer's router did during one step of N tokens (E experts, top-k K).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterTelemetry {
    /// K.
    pub top_k: usize,
    /// (N) difficulty d_t (0 for the standard router).
    pub difficulty: Vec<f32>,
    /// (N) normalised entropy of softmax(z).
    pub entropy: Vec<f32>,
    /// (N, E) p (softmax of the conditioned logits).
    pub router_probs: Vec<f32>,
    /// (N, K) chosen experts, by decreasing p (ties: lower index).
    pub topk_idx: Vec<u32>,
    /// (N, K) their renormalised weights.
    pub topk_weight: Vec<f32>,
    /// `[P_m, P_s]`.
    pub group_shares: [f32; 2],
    /// (E) tokens routed to each expert.
    pub expert_counts: Vec<u32>,
    /// (E) loads u_e.
    pub expert_loads: Vec<f32>,
    /// `[L_d, L_g, L_z, L_lb]` (see [`LOSS_NAMES`]).
    pub losses: [f32; 4],
}

impl RouterTelemetry {
    /// Assembles per-token read-backs and the layer summary.
    pub(crate) fn new(
        top_k: usize,
        difficulty: Vec<f32>,
        entropy: Vec<f32>,
        router_probs: Vec<f32>,
        topk_idx: Vec<u32>,
        topk_weight: Vec<f32>,
        summary: RouterSummary,
    ) -> Self {
        RouterTelemetry {
            top_k,
            difficulty,
            entropy,
            router_probs,
            topk_idx,
            topk_weight,
            group_shares: summary.group_shares,
            expert_counts: summary.expert_counts,
            expert_loads: summary.expert_loads,
            losses: summary.losses,
        }
    }

    /// N.
    pub fn tokens(&self) -> usize {
        self.difficulty.len()
    }

    /// E.
    pub fn experts(&self) -> usize {
        self.expert_counts.len()
    }

    /// Experts that received at least one token.
    pub fn active_experts(&self) -> usize {
        self.expert_counts.iter().filter(|&&c| c > 0).count()
    }
}

impl fmt::Display for RouterTelemetry {
    /// A short human-readable summary: counts, loads, shares and losses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} tokens, top-{} of {} experts ({} active)",
            self.tokens(),
            self.top_k,
            self.experts(),
            self.active_experts()
        )?;
        writeln!(f, "  tokens per expert: {:?}", self.expert_counts)?;
        let loads: Vec<String> = self
            .expert_loads
            .iter()
            .map(|u| format!("{u:.4}"))
            .collect();
        writeln!(f, "  expert loads:      [{}]", loads.join(", "))?;
        writeln!(
            f,
            "  group shares:      P_m {:.4}, P_s {:.4}",
            self.group_shares[0], self.group_shares[1]
        )?;
        let losses: Vec<String> = LOSS_NAMES
            .iter()
            .zip(self.losses)
            .map(|(n, v)| format!("{n} {v:.6}"))
            .collect();
        write!(f, "  losses:            {}", losses.join(", "))
    }
}
