//! Image-text retrieval: ITC similarity of normalized [CLS] projections, then ITM re-scoring
//! of the top `k` candidates, as the reference's evaluation does.

use super::topk_rows;
use crate::error::{Error, Result};
use crate::model::Mplug;
use candle_core::{DType, Tensor};

/// Encoded texts: states for fusion and normalized ITC features.
#[derive(Debug, Clone)]
pub struct TextSide {
    /// Text encoder states `(Nt, Lt, H)`.
    pub embeds: Tensor,
    /// Padding mask `(Nt, Lt)`.
    pub mask: Tensor,
    /// Normalized ITC features `(Nt, E)`.
    pub feat: Tensor,
}

/// Encoded images (or videos): visual tokens for fusion and normalized ITC features.
#[derive(Debug, Clone)]
pub struct ImageSide {
    /// Visual tokens `(Ni, Li, H)` (a video's frames concatenated along the sequence).
    pub embeds: Tensor,
    /// Normalized ITC features `(Ni, E)`.
    pub feat: Tensor,
}

/// Encodes texts `ids (Nt, Lt)` for retrieval.
pub fn encode_texts(model: &Mplug, ids: &Tensor, mask: &Tensor) -> Result<TextSide> {
    let embeds = model.encode_text(ids, mask)?;
    let feat = model.text_feature(&embeds)?;
    Ok(TextSide {
        embeds,
        mask: mask.clone(),
        feat,
    })
}

/// Encodes normalized images `(Ni, 3, R, R)` for retrieval.
pub fn encode_images(model: &Mplug, images: &Tensor) -> Result<ImageSide> {
    let embeds = model.encode_image(images)?;
    let feat = model.image_feature(&embeds)?;
    Ok(ImageSide { embeds, feat })
}

/// ITC similarities `(Ni, Nt)`: dot products of the normalized features.
pub fn similarities(images: &ImageSide, texts: &TextSide) -> Result<Tensor> {
    Ok(images.feat.matmul(&texts.feat.t()?)?)
}

/// ITC similarities as rows, `matrix[image][text]`: every text scored, none re-scored.
pub fn similarity_rows(images: &ImageSide, texts: &TextSide) -> Result<ScoreMatrix> {
    let rows = similarities(images, texts)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    crate::error::ensure_finite(rows.iter().flatten(), "the ITC similarities")?;
    Ok(rows)
}

/// ITM logits `(n, 2)` for pairs `(image_rows[p], text_rows[p])`.
pub fn itm_pairs(
    model: &Mplug,
    images: &ImageSide,
    texts: &TextSide,
    pairs: &[(usize, usize)],
) -> Result<Tensor> {
    let dev = images.embeds.device();
    let (ii, ti): (Vec<u32>, Vec<u32>) = pairs.iter().map(|&(i, t)| (i as u32, t as u32)).unzip();
    let n = pairs.len();
    let ii = Tensor::from_vec(ii, n, dev)?;
    let ti = Tensor::from_vec(ti, n, dev)?;
    let image = images.embeds.index_select(&ii, 0)?;
    let text = texts.embeds.index_select(&ti, 0)?;
    let mask = texts.mask.index_select(&ti, 0)?;
    let (_, fused) = model.fuse(&text, &mask, &image)?;
    model.itm_logits(&fused)
}

/// ITM positive logits, the score the reference re-ranks by, for pairs `(image_rows[p],
/// text_rows[p])`.
pub fn itm_positive(
    model: &Mplug,
    images: &ImageSide,
    texts: &TextSide,
    pairs: &[(usize, usize)],
) -> Result<Vec<f32>> {
    let scores = itm_pairs(model, images, texts, pairs)?
        .narrow(1, 1, 1)?
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    crate::error::ensure_finite(&scores, "the ITM scores")?;
    Ok(scores)
}

/// ITM match probabilities for pairs `(image_rows[p], text_rows[p])`: the softmax of the ITM
/// head's two logits, the match class's share (the score users read as "does this text fit").
pub fn itm_probabilities(
    model: &Mplug,
    images: &ImageSide,
    texts: &TextSide,
    pairs: &[(usize, usize)],
) -> Result<Vec<f32>> {
    let logits = itm_pairs(model, images, texts, pairs)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?
        .narrow(1, 1, 1)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    crate::error::ensure_finite(&probs, "the ITM probabilities")?;
    Ok(probs)
}

/// ITM logits for every pair: `(Ni, Nt, 2)`, entry `[i, j]` for text `j` with image `i`.
pub fn itm_matrix(model: &Mplug, images: &ImageSide, texts: &TextSide) -> Result<Tensor> {
    let ni = images.embeds.dim(0)?;
    let nt = texts.embeds.dim(0)?;
    let pairs: Vec<(usize, usize)> = (0..ni).flat_map(|i| (0..nt).map(move |j| (i, j))).collect();
    Ok(itm_pairs(model, images, texts, &pairs)?.reshape((ni, nt, 2))?)
}

/// Rows of scores: `matrix[query][candidate]`.
pub type ScoreMatrix = Vec<Vec<f32>>;

/// How the reference scores a re-ranked candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescore {
    /// The ITM positive logit (image retrieval evaluation).
    Itm,
    /// The ITM positive logit plus the ITC similarity (video retrieval evaluation).
    ItmPlusSimilarity,
    /// The ITC similarity alone, no ITM: not the reference's evaluation, but the ranking to
    /// read when a model's ITM head ranks worse than its ITC features.
    Similarity,
}

impl Rescore {
    /// The scores of candidate `pairs` `(image_row, text_row)` whose ITC similarities are
    /// `sims`; the ITM head runs only for the rescorings that read it.
    pub fn pair_scores(
        self,
        model: &Mplug,
        images: &ImageSide,
        texts: &TextSide,
        pairs: &[(usize, usize)],
        sims: &[f32],
    ) -> Result<Vec<f32>> {
        if self == Rescore::Similarity {
            return Ok(sims.to_vec());
        }
        let itm = itm_positive(model, images, texts, pairs)?;
        Ok(itm
            .iter()
            .zip(sims)
            .map(|(&itm, &sim)| match self {
                Rescore::ItmPlusSimilarity => itm + sim,
                _ => itm,
            })
            .collect())
    }

    /// How the log and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Rescore::Itm => "itm",
            Rescore::ItmPlusSimilarity => "itm+itc",
            Rescore::Similarity => "itc",
        }
    }
}

/// Image-text pairs the ITM head reads per call where memory matters (a search, a command
/// over many images): a batch of fusion passes, small enough for any machine.
pub const ITM_PAIRS_PER_CALL: usize = 16;

/// Which side of the similarity matrix a query is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// An image (or clip) ranking texts: a row of the `(images, texts)` similarities.
    Image,
    /// A text ranking images: a row of the transposed similarities.
    Text,
}

/// The re-ranking every retrieval shares (the library's, the index's, evaluation's): for each
/// query, a row of `sims` (`(queries, candidates)`; `queries[r]` is row `r`'s index among the
/// images or texts, as `query` says), its top `min(k, candidates)` candidates by ITC
/// similarity, re-scored as `rescore` says, in ITC order: `(candidate, score)`. The ITM head
/// reads at most `max_pairs` pairs per call (memory; each pair's score is its own).
#[allow(clippy::too_many_arguments)]
pub fn rerank_rows(
    model: &Mplug,
    images: &ImageSide,
    texts: &TextSide,
    sims: &Tensor,
    queries: &[usize],
    query: Query,
    k: usize,
    rescore: Rescore,
    max_pairs: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    if k == 0 {
        return Err(Error::invalid("k must be at least 1"));
    }
    let (rows, cols) = sims.dims2()?;
    if rows != queries.len() {
        return Err(Error::invalid(format!(
            "{rows} similarity rows for {} queries",
            queries.len()
        )));
    }
    let k = k.min(cols);
    let top = topk_rows(sims, k)?;
    let pairs: Vec<(usize, usize)> = queries
        .iter()
        .zip(&top)
        .flat_map(|(&q, row)| {
            row.iter().map(move |&(c, _)| match query {
                Query::Image => (q, c),
                Query::Text => (c, q),
            })
        })
        .collect();
    let pair_sims: Vec<f32> = top.iter().flatten().map(|&(_, sim)| sim).collect();
    let mut scores = Vec::with_capacity(pairs.len());
    for (p, s) in pairs
        .chunks(max_pairs.max(1))
        .zip(pair_sims.chunks(max_pairs.max(1)))
    {
        scores.extend(rescore.pair_scores(model, images, texts, p, s)?);
    }
    Ok(top
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(j, &(c, _))| (c, scores[r * k + j]))
                .collect()
        })
        .collect())
}

/// Re-ranked rows as a score matrix `(rows, width)`: each row's candidates get their score,
/// every other entry -100 (the reference's fill).
pub fn score_matrix(rows: &[Vec<(usize, f32)>], width: usize) -> ScoreMatrix {
    rows.iter()
        .map(|row| {
            let mut out = vec![-100f32; width];
            for &(c, s) in row {
                out[c] = s;
            }
            out
        })
        .collect()
}

/// Score matrices of the reference's evaluation: for each image the top `k` texts by ITC
/// similarity are re-scored, and for each text its top `k` images; every other entry is -100.
/// Each side's `k` is at most its number of candidates (so with one image and three texts,
/// `k = 16` re-scores all three texts of the image, and the one image of each text). Returns
/// `(i2t (Ni, Nt), t2i (Nt, Ni))`.
pub fn rerank(
    model: &Mplug,
    images: &ImageSide,
    texts: &TextSide,
    k: usize,
    rescore: Rescore,
) -> Result<(ScoreMatrix, ScoreMatrix)> {
    let sims = similarities(images, texts)?;
    let (ni, nt) = sims.dims2()?;
    if k == 0 {
        return Err(Error::invalid("k must be at least 1"));
    }
    if ni == 0 || nt == 0 {
        return Err(Error::invalid(format!(
            "retrieval needs images and texts ({ni} images, {nt} texts)"
        )));
    }
    let side = |sims: &Tensor, rows: usize, query: Query| -> Result<Vec<Vec<(usize, f32)>>> {
        let queries: Vec<usize> = (0..rows).collect();
        rerank_rows(
            model,
            images,
            texts,
            sims,
            &queries,
            query,
            k,
            rescore,
            usize::MAX,
        )
    };
    let i2t = score_matrix(&side(&sims, ni, Query::Image)?, nt);
    let t2i = score_matrix(&side(&sims.t()?.contiguous()?, nt, Query::Text)?, ni);
    Ok((i2t, t2i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MplugConfig, Task};
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};

    /// One image and three texts at `k = 16`: every text of the image is re-scored (with its
    /// ITM logit), and each text's one image; `k = 0` is an error.
    #[test]
    fn each_side_reranks_up_to_its_own_candidates() {
        let dev = Device::Cpu;
        let cfg = MplugConfig::tiny();
        let varmap = VarMap::new();
        let model = Mplug::new(
            &cfg,
            Task::Retrieval,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )
        .unwrap();
        let r = cfg.image_res;
        let images = Tensor::randn(0f32, 1f32, (1, 3, r, r), &dev).unwrap();
        let ids = Tensor::new(
            &[
                [101u32, 104, 105, 102],
                [101, 106, 107, 102],
                [101, 108, 109, 102],
            ],
            &dev,
        )
        .unwrap();
        let mask = Tensor::ones((3, 4), DType::U32, &dev).unwrap();
        let im = encode_images(&model, &images).unwrap();
        let tx = encode_texts(&model, &ids, &mask).unwrap();
        for rescore in [Rescore::Itm, Rescore::Similarity] {
            let (i2t, t2i) = rerank(&model, &im, &tx, 16, rescore).unwrap();
            assert_eq!((i2t.len(), i2t[0].len()), (1, 3));
            assert_eq!((t2i.len(), t2i[0].len()), (3, 1));
            let pairs = [(0, 0), (0, 1), (0, 2)];
            let want = match rescore {
                Rescore::Itm => itm_positive(&model, &im, &tx, &pairs).unwrap(),
                _ => similarity_rows(&im, &tx).unwrap()[0].clone(),
            };
            for (j, w) in want.iter().enumerate() {
                assert!((i2t[0][j] - w).abs() < 1e-5, "{rescore:?} i2t {j}: {i2t:?}");
                assert!((t2i[j][0] - w).abs() < 1e-5, "{rescore:?} t2i {j}: {t2i:?}");
            }
        }
        // k = 1 re-scores one text of the image; the others stay outside the top k.
        let (i2t, _) = rerank(&model, &im, &tx, 1, Rescore::Itm).unwrap();
        assert_eq!(i2t[0].iter().filter(|&&s| s == -100.0).count(), 2);
        assert!(rerank(&model, &im, &tx, 0, Rescore::Itm).is_err());
    }
}
