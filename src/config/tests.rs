//! Config parsing and preset checks.

use super::*;

#[test]
fn presets_are_valid_and_count_parameters() {
    for name in presets::NAMES {
        let c = presets::by_name(name).unwrap();
        c.validate().unwrap();
    }
    // openai/clip-vit-base-patch32 has 151,277,313 parameters; SigLIP B/16 203,155,970 and So400m/14-384
    // 877,960,498 (`sum(p.numel() for p in SiglipModel(config).parameters())` in transformers 5.24).
    assert_eq!(
        presets::by_name("vit-b-32").unwrap().parameter_count(),
        151_277_313
    );
    assert_eq!(
        presets::by_name("siglip-b-16").unwrap().parameter_count(),
        203_155_970
    );
    assert_eq!(
        presets::by_name("siglip-so400m-14-384")
            .unwrap()
            .parameter_count(),
        877_960_498
    );
}

#[test]
fn legacy_dict_form_and_defaults() {
    let json = r#"{"model_type":"clip","text_config":null,
        "text_config_dict":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":2,"eos_token_id":2},
        "vision_config_dict":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"image_size":32,"patch_size":8,"hidden_act":"gelu"},
        "projection_dim":16}"#;
    let c = ClipConfig::from_json_str(json).ok().unwrap();
    assert_eq!(c.text.eos_token_id, 2);
    assert_eq!(c.text.encoder.activation, Activation::QuickGelu);
    assert_eq!(c.vision.encoder.activation, Activation::Gelu);
    assert_eq!(c.vision.seq_len(), 17);
    assert_eq!(c.text.max_position_embeddings, 77);
}

#[test]
fn every_activation_round_trips_through_its_hf_name() {
    for act in Activation::ALL {
        assert_eq!(Activation::parse(act.name()), Some(act));
    }
    assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
    assert_eq!(Activation::parse("relu"), None);
}
