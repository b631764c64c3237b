//! Retrieval recall@K as mPLUG's `itm_eval` computes it.
//!
//! * Image–text ([`image_text_retrieval`], `retrieval_img_mplug.py`): for text
//!   retrieval (TR) the rank of an image is the best rank among all of its
//!   captions; for image retrieval (IR) the rank of a caption is the rank of
//!   its image.
//! * Video–text ([`video_text_retrieval`], `retrieval_vid_mplug.py`): one
//!   ground-truth item per query in both directions, plus the median rank
//!   (1-based) of the text-to-video direction.
//!
//! Ranks are 0-based positions in the list sorted by decreasing score, as in
//! `np.argsort(score)[::-1]`. **Ties**: an item is ranked behind every item
//! with a strictly higher score and behind every item with an equal score
//! and a *larger* index, i.e. the order of a stable ascending sort, reversed.
//! numpy's default (unstable) argsort agrees for rows of at most 16 entries
//! when it uses its scalar insertion sort; otherwise numpy's order of tied
//! scores is implementation-defined, so only tie-free rows are guaranteed to
//! match it. NaN scores are rejected.
//! All recalls are percentages.

use super::error::{MetricsError, Result};

/// Image–text retrieval metrics (percent), named as in mPLUG's `itm_eval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageRetrievalMetrics {
    /// Text retrieval (image → text) recall@1.
    pub txt_r1: f64,
    /// Text retrieval recall@5.
    pub txt_r5: f64,
    /// Text retrieval recall@10.
    pub txt_r10: f64,
    /// Mean of the three text-retrieval recalls.
    pub txt_r_mean: f64,
    /// Image retrieval (text → image) recall@1.
    pub img_r1: f64,
    /// Image retrieval recall@5.
    pub img_r5: f64,
    /// Image retrieval recall@10.
    pub img_r10: f64,
    /// Mean of the three image-retrieval recalls.
    pub img_r_mean: f64,
    /// Mean of `txt_r_mean` and `img_r_mean`.
    pub r_mean: f64,
}

/// Video–text retrieval metrics (percent), named as in mPLUG's `itm_eval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoRetrievalMetrics {
    /// Video → text recall@1.
    pub txt_r1: f64,
    /// Video → text recall@5.
    pub txt_r5: f64,
    /// Video → text recall@10.
    pub txt_r10: f64,
    /// Mean of the three video → text recalls.
    pub txt_r_mean: f64,
    /// Text → video recall@1.
    pub vid_r1: f64,
    /// Text → video recall@5.
    pub vid_r5: f64,
    /// Text → video recall@10.
    pub vid_r10: f64,
    /// Mean of the three text → video recalls.
    pub vid_r_mean: f64,
    /// Median 1-based rank of the ground-truth video over text queries (`vid_mdR`).
    pub vid_median_rank: f64,
    /// Mean of `txt_r_mean` and `vid_r_mean`.
    pub r_mean: f64,
}

/// 0-based rank of `target` in `scores` under the documented tie rule.
///
/// Errors when `target` is out of range or any score is NaN.
pub fn rank_of<T: Copy + Into<f64>>(scores: &[T], target: usize) -> Result<usize> {
    if target >= scores.len() {
        return Err(MetricsError::IndexOutOfRange {
            what: "retrieval target",
            index: target,
            size: scores.len(),
        });
    }
    let t: f64 = scores[target].into();
    let mut rank = 0usize;
    for (j, &s) in scores.iter().enumerate() {
        let s: f64 = s.into();
        if s.is_nan() {
            return Err(MetricsError::NonFinite {
                what: "retrieval scores",
                index: j,
            });
        }
        if s > t || (s == t && j > target) {
            rank += 1;
        }
    }
    Ok(rank)
}

/// Percentage of ranks below `k` (`Some(r)` with `r < k`); `None` (no
/// ground truth) counts as a miss. Errors on an empty slice.
pub fn recall_at_k(ranks: &[Option<usize>], k: usize) -> Result<f64> {
    if ranks.is_empty() {
        return Err(MetricsError::Empty { what: "recall@K" });
    }
    let hits = ranks
        .iter()
        .filter(|r| matches!(r, Some(r) if *r < k))
        .count();
    Ok(100.0 * hits as f64 / ranks.len() as f64)
}

/// Median of 1-based ranks (`np.median(ranks + 1)`): mean of the two middle
/// values for an even count. Errors on an empty slice.
pub fn median_rank(ranks: &[usize]) -> Result<f64> {
    if ranks.is_empty() {
        return Err(MetricsError::Empty {
            what: "median rank",
        });
    }
    let mut v: Vec<usize> = ranks.iter().map(|r| r + 1).collect();
    v.sort_unstable();
    let m = v.len() / 2;
    Ok(if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] as f64 + v[m] as f64) / 2.0
    })
}

fn check_matrix<R: AsRef<[T]>, T>(what: &'static str, rows: &[R], cols: usize) -> Result<()> {
    for r in rows {
        if r.as_ref().len() != cols {
            return Err(MetricsError::LengthMismatch {
                what,
                left: r.as_ref().len(),
                right: cols,
            });
        }
    }
    Ok(())
}

/// Ranks of one direction where every query has one ground-truth item.
fn single_target_ranks<R, T>(rows: &[R], targets: &[usize]) -> Result<Vec<usize>>
where
    R: AsRef<[T]>,
    T: Copy + Into<f64>,
{
    rows.iter()
        .zip(targets)
        .map(|(row, &t)| rank_of(row.as_ref(), t))
        .collect()
}

/// Image–text retrieval metrics from the two score matrices.
///
/// * `scores_i2t`: `n_images × n_texts` (row = image query);
/// * `scores_t2i`: `n_texts × n_images` (row = text query);
/// * `txt2img[t]`: the image of caption `t`;
/// * `img2txts[i]`: the captions of image `i` (an image without captions
///   counts as a TR miss, as with the reference's rank `1e20`).
///
/// Errors on empty or inconsistently shaped inputs, out-of-range indices and
/// NaN scores.
pub fn image_text_retrieval<R, T>(
    scores_i2t: &[R],
    scores_t2i: &[R],
    txt2img: &[usize],
    img2txts: &[Vec<usize>],
) -> Result<ImageRetrievalMetrics>
where
    R: AsRef<[T]>,
    T: Copy + Into<f64>,
{
    let n_img = scores_i2t.len();
    let n_txt = scores_t2i.len();
    if n_img == 0 || n_txt == 0 {
        return Err(MetricsError::Empty {
            what: "image-text retrieval",
        });
    }
    if img2txts.len() != n_img {
        return Err(MetricsError::LengthMismatch {
            what: "img2txts vs i2t rows",
            left: img2txts.len(),
            right: n_img,
        });
    }
    if txt2img.len() != n_txt {
        return Err(MetricsError::LengthMismatch {
            what: "txt2img vs t2i rows",
            left: txt2img.len(),
            right: n_txt,
        });
    }
    check_matrix("i2t row length vs number of texts", scores_i2t, n_txt)?;
    check_matrix("t2i row length vs number of images", scores_t2i, n_img)?;

    let mut tr_ranks = Vec::with_capacity(n_img);
    for (row, txts) in scores_i2t.iter().zip(img2txts) {
        let mut best: Option<usize> = None;
        for &t in txts {
            let r = rank_of(row.as_ref(), t)?;
            best = Some(best.map_or(r, |b| b.min(r)));
        }
        tr_ranks.push(best);
    }
    let ir_ranks: Vec<Option<usize>> = single_target_ranks(scores_t2i, txt2img)?
        .into_iter()
        .map(Some)
        .collect();

    let txt_r1 = recall_at_k(&tr_ranks, 1)?;
    let txt_r5 = recall_at_k(&tr_ranks, 5)?;
    let txt_r10 = recall_at_k(&tr_ranks, 10)?;
    let img_r1 = recall_at_k(&ir_ranks, 1)?;
    let img_r5 = recall_at_k(&ir_ranks, 5)?;
    let img_r10 = recall_at_k(&ir_ranks, 10)?;
    let txt_r_mean = (txt_r1 + txt_r5 + txt_r10) / 3.0;
    let img_r_mean = (img_r1 + img_r5 + img_r10) / 3.0;
    Ok(ImageRetrievalMetrics {
        txt_r1,
        txt_r5,
        txt_r10,
        txt_r_mean,
        img_r1,
        img_r5,
        img_r10,
        img_r_mean,
        r_mean: (txt_r_mean + img_r_mean) / 2.0,
    })
}

/// Video–text retrieval metrics from the two score matrices.
///
/// * `scores_v2t`: `n_videos × n_texts` (row = video query);
/// * `scores_t2v`: `n_texts × n_videos` (row = text query);
/// * `txt2vid[t]`: the video of text `t`; `vid2txt[v]`: the text of video `v`.
///
/// Errors on empty or inconsistently shaped inputs, out-of-range indices and
/// NaN scores.
pub fn video_text_retrieval<R, T>(
    scores_v2t: &[R],
    scores_t2v: &[R],
    txt2vid: &[usize],
    vid2txt: &[usize],
) -> Result<VideoRetrievalMetrics>
where
    R: AsRef<[T]>,
    T: Copy + Into<f64>,
{
    let n_vid = scores_v2t.len();
    let n_txt = scores_t2v.len();
    if n_vid == 0 || n_txt == 0 {
        return Err(MetricsError::Empty {
            what: "video-text retrieval",
        });
    }
    if vid2txt.len() != n_vid {
        return Err(MetricsError::LengthMismatch {
            what: "vid2txt vs v2t rows",
            left: vid2txt.len(),
            right: n_vid,
        });
    }
    if txt2vid.len() != n_txt {
        return Err(MetricsError::LengthMismatch {
            what: "txt2vid vs t2v rows",
            left: txt2vid.len(),
            right: n_txt,
        });
    }
    check_matrix("v2t row length vs number of texts", scores_v2t, n_txt)?;
    check_matrix("t2v row length vs number of videos", scores_t2v, n_vid)?;

    let tr: Vec<Option<usize>> = single_target_ranks(scores_v2t, vid2txt)?
        .into_iter()
        .map(Some)
        .collect();
    let vr_plain = single_target_ranks(scores_t2v, txt2vid)?;
    let vid_median_rank = median_rank(&vr_plain)?;
    let vr: Vec<Option<usize>> = vr_plain.into_iter().map(Some).collect();

    let txt_r1 = recall_at_k(&tr, 1)?;
    let txt_r5 = recall_at_k(&tr, 5)?;
    let txt_r10 = recall_at_k(&tr, 10)?;
    let vid_r1 = recall_at_k(&vr, 1)?;
    let vid_r5 = recall_at_k(&vr, 5)?;
    let vid_r10 = recall_at_k(&vr, 10)?;
    let txt_r_mean = (txt_r1 + txt_r5 + txt_r10) / 3.0;
    let vid_r_mean = (vid_r1 + vid_r5 + vid_r10) / 3.0;
    Ok(VideoRetrievalMetrics {
        txt_r1,
        txt_r5,
        txt_r10,
        txt_r_mean,
        vid_r1,
        vid_r5,
        vid_r10,
        vid_r_mean,
        vid_median_rank,
        r_mean: (txt_r_mean + vid_r_mean) / 2.0,
    })
}
