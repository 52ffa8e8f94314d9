"""The numbers of a study report, and nothing else (no formatting: `report.py` writes the tables and sentences).

Anchor: E. Miller, "Adding Error Bars to Evals: A Statistical Approach to Language Model Evaluations" (2024,
arXiv 2411.00640): standard errors over questions, paired differences on the same questions; plus a term for the
training seed, which evals of one model do not have. The unit of independence is the question: seeds add training
noise, never questions. Notation: configuration c, task t with N_t questions, k finished seeds; x[q, s] in {0, 1}.

1. Cell (c, t), `cell`: a_s = mean over q of x[q, s]; mean = mean over s of a_s. 95 % interval:
   [mean - sqrt((mean - W_lo)² + h_s²), mean + sqrt((W_hi - mean)² + h_s²)] cut to [0, 1], where [W_lo, W_hi] is
   the Wilson interval (z = 1.959964) of the proportion `mean` with n = N_t questions (never questions x seeds),
   and h_s = t(0.975, k - 1) · sd_s / sqrt(k), sd_s the sample sd (k - 1) of the a_s; h_s = 0 when k = 1 (the
   training noise is then not measured).
2. Average column, `average_cell`: A_s = mean over the T tasks of a[t, s]; mean = mean over s of A_s;
   h_q = 1.959964 · sqrt(Σ_t p_t (1 - p_t) / N_t) / T with p_t the cell's mean; h_s as in 1 on the A_s;
   interval mean ± sqrt(h_q² + h_s²), cut to [0, 1].
3. A vs B, `paired_difference`, on the tasks both have and the questions both answered in each task:
   D = avg_A - avg_B (the two rows' averages over those tasks and questions); per question
   d[t, q] = m_A[t, q] - m_B[t, q], m the configuration's mean over its own seeds (seeds are never paired by
   number); V_q = Σ_t var(d[t, ·]) / N_t / T² (sample variance, N_t - 1); V_s = sd²(A_s of A) / k_A +
   sd²(A_s of B) / k_B (a term only where k >= 2); SE = sqrt(V_q + V_s); z = D / SE; p = 2 (1 - Φ(|z|)); where
   SE = 0, p = 1 if D = 0, else 0. `holm` adjusts the p-values of one report (Holm's step-down).
4. Planning, `minimum_detectable_difference`: the difference that test finds with 80 % power at two-sided 5 %,
   (z_0.975 + z_0.80) · SE, with SE from 3 under stated assumptions (accuracy p_t, seed sd σ, correlation ρ of
   the two configurations' per-question outcomes): V_q = Σ_t 2 p_t (1 - p_t) (1 - ρ) / N_t / T²,
   V_s = σ² / k_A + σ² / k_B (a term only where k >= 2).
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from llm_adapters.eval.score import Z95, wilson_interval

ALPHA = 0.05
POWER = 0.80


def t_quantile(probability: float, df: int) -> float:
    """Student's t quantile (SciPy)."""
    from scipy import stats

    return float(stats.t.ppf(probability, df))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: list[float]) -> float:
    """Sample variance (n - 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def seed_spread(values: list[float]) -> tuple[float | None, float]:
    """(sd, h_s) of per-seed values: the sample sd (None for one seed) and the t half-width
    t(0.975, k - 1) · sd / sqrt(k) (0 for one seed: the training noise is not measured)."""
    k = len(values)
    if k < 2:
        return None, 0.0
    sd = math.sqrt(_variance(values))
    return sd, t_quantile(0.975, k - 1) * sd / math.sqrt(k)


def _clip(low: float, high: float) -> tuple[float, float]:
    return max(0.0, low), min(1.0, high)


def cell(accuracies: list[float], n_questions: int) -> dict[str, Any]:
    """Definition 1: one configuration on one task.

    Args:
        accuracies: a_s, the accuracy of each finished seed on the task's questions.
        n_questions: N_t, the questions of the task (the Wilson interval's n).

    Returns:
        {"mean", "sd" (None for one seed), "ci95": (low, high), "n_seeds", "n_questions", "seed_half_width",
        "wilson": (W_lo, W_hi)}.
    """
    mean = _mean(accuracies)
    w_low, w_high = wilson_interval(mean * n_questions, n_questions)  # a mean over seeds: a fractional count
    sd, h_s = seed_spread(accuracies)
    low, high = _clip(mean - math.hypot(mean - w_low, h_s), mean + math.hypot(w_high - mean, h_s))
    return {"mean": mean, "sd": sd, "ci95": (low, high), "n_seeds": len(accuracies), "n_questions": n_questions,
            "seed_half_width": h_s, "wilson": (w_low, w_high)}


def average_cell(accuracies: dict[str, list[float]], n_questions: dict[str, int]) -> dict[str, Any]:
    """Definition 2: one configuration's unweighted mean over tasks.

    Args:
        accuracies: per task, a[t, s] for each seed s (the same seeds, in the same order, for every task).
        n_questions: per task, N_t.

    Returns:
        {"mean", "sd" (of the A_s; None for one seed), "ci95", "n_seeds", "n_questions" (Σ N_t),
        "seed_half_width", "question_half_width"}.
    """
    tasks = list(accuracies)
    k = len(accuracies[tasks[0]])
    per_seed = [_mean([accuracies[t][s] for t in tasks]) for s in range(k)]  # A_s
    mean = _mean(per_seed)
    p = {t: _mean(accuracies[t]) for t in tasks}
    h_q = Z95 * math.sqrt(math.fsum(p[t] * (1 - p[t]) / n_questions[t] for t in tasks)) / len(tasks)
    sd, h_s = seed_spread(per_seed)
    half = math.hypot(h_q, h_s)
    return {"mean": mean, "sd": sd, "ci95": _clip(mean - half, mean + half), "n_seeds": k,
            "n_questions": sum(n_questions[t] for t in tasks), "seed_half_width": h_s, "question_half_width": h_q}


Outcomes = dict[int, bool]  # question index -> correct, for one seed on one task


def paired_difference(a: dict[str, list[Outcomes]], b: dict[str, list[Outcomes]]) -> dict[str, Any]:
    """Definition 3: configuration A against B on the tasks both have and, in each, the questions every seed of
    both answered.

    Args:
        a, b: per task, one {question index: correct} per finished seed of the configuration (any number of
            seeds, unpaired).

    Returns:
        {"difference": D, "se", "z", "p", "n_questions" (Σ N_t), "a_better", "b_better" (questions where A's
        mean over its seeds is higher, and where B's is), "tasks", "seeds_a", "seeds_b", "mean_a", "mean_b"}.
        With no question in common: n_questions 0 and difference, se, z, p None.
    """
    shared: dict[str, list[int]] = {}
    for task in a:
        if task in b:
            questions = set.intersection(*(set(seed) for seed in a[task] + b[task]))
            if questions:
                shared[task] = sorted(questions)
    k_a = len(next(iter(a.values()), []))
    k_b = len(next(iter(b.values()), []))
    empty = {"difference": None, "se": None, "z": None, "p": None, "n_questions": 0, "a_better": 0,
             "b_better": 0, "tasks": [], "seeds_a": k_a, "seeds_b": k_b, "mean_a": None, "mean_b": None}
    if not shared:
        return empty
    n_tasks = len(shared)
    v_q, a_better, b_better = 0.0, 0, 0
    for task, questions in shared.items():
        m_a = [_mean([float(seed[q]) for seed in a[task]]) for q in questions]
        m_b = [_mean([float(seed[q]) for seed in b[task]]) for q in questions]
        d = [x - y for x, y in zip(m_a, m_b)]
        v_q += _variance(d) / len(questions) / n_tasks ** 2
        a_better += sum(x > y for x, y in zip(m_a, m_b))
        b_better += sum(y > x for x, y in zip(m_a, m_b))

    def per_seed(side: dict[str, list[Outcomes]], k: int) -> list[float]:  # A_s over the shared questions
        return [_mean([_mean([float(side[t][s][q]) for q in shared[t]]) for t in shared]) for s in range(k)]

    a_s, b_s = per_seed(a, k_a), per_seed(b, k_b)
    v_s = sum(_variance(values) / len(values) for values in (a_s, b_s) if len(values) >= 2)
    mean_a, mean_b = _mean(a_s), _mean(b_s)
    difference = mean_a - mean_b
    se = math.sqrt(v_q + v_s)
    if se == 0:
        z, p = None, 1.0 if difference == 0 else 0.0
    else:
        z = difference / se
        p = math.erfc(abs(z) / math.sqrt(2))  # = 2 (1 - Φ(|z|)), without the cancellation for large |z|
    return {**empty, "difference": difference, "se": se, "z": z, "p": p,
            "n_questions": sum(len(q) for q in shared.values()), "a_better": a_better, "b_better": b_better,
            "tasks": list(shared), "mean_a": mean_a, "mean_b": mean_b}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, the j-th smallest (1-based) is
    multiplied by m - j + 1, cut at 1, and made non-decreasing (a running maximum). Written out: five lines, and
    no statistics package for it."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def minimum_detectable_difference(n_questions: dict[str, int], accuracy: dict[str, float], seed_sd: float,
                                  correlation: float, k_a: int, k_b: int, alpha: float = ALPHA,
                                  power: float = POWER) -> dict[str, float]:
    """Definition 4: the smallest true difference (in accuracy, 0-1) that the paired test of definition 3
    detects with probability `power` at two-sided level `alpha`, per task and for the average over the tasks.

    Args:
        n_questions: N_t per task.
        accuracy: the assumed accuracy p_t per task (the question variance of one answer is p_t (1 - p_t)).
        seed_sd: σ, the assumed sd of a configuration's accuracy over training seeds (per task and average).
        correlation: ρ, the assumed correlation of the two configurations' per-question outcomes.
        k_a, k_b: the seeds of each side; a side with k < 2 adds no seed term (0 for the base model, which has
            no training noise; 1 for one seed, whose training noise the test then does not measure).

    Returns:
        {task: mdd, ..., "average": mdd}.
    """
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    v_s = sum(seed_sd ** 2 / k for k in (k_a, k_b) if k >= 2)

    def question_variance(task: str) -> float:  # of one question's difference d
        return 2 * accuracy[task] * (1 - accuracy[task]) * (1 - correlation)

    found = {t: z * math.sqrt(question_variance(t) / n + v_s) for t, n in n_questions.items()}
    tasks = list(n_questions)
    v_q = math.fsum(question_variance(t) / n_questions[t] for t in tasks) / len(tasks) ** 2
    found["average"] = z * math.sqrt(v_q + v_s)
    return found
