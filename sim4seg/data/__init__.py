"""M3DS data: record schema, vocabulary, prompts, datasets, converters, synthetic data, CoT pipeline."""
