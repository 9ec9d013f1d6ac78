"""A pretrained weight's ``transforms()`` and `bitnetcnn predict`: what a user does with an image of their own."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitnetcnn import PretrainedCfg, list_pretrained
from bitnetcnn.cli import main
from bitnetcnn.data.catalog import get_dataset_spec
from bitnetcnn.hub import load
from bitnetcnn.normalization import CIFAR100, normalize
from bitnetcnn.preprocess import Preprocess
from bitnetcnn.settings import data_root
from bitnetcnn.train.evaluate import evaluate_model

CIFAR_CFG = PretrainedCfg("bit_resnet18", input_size=(3, 32, 32), mean=CIFAR100[0], std=CIFAR100[1])


def test_pil_images_through_transforms_score_as_bitnetcnn_eval():
    """The published MNIST weight, fed the demo test set one PIL image at a time through its own transforms,
    scores what `bitnetcnn eval` measures: the same floats reach the model."""
    model = load("bitnet_mnist", pretrained=True)
    cfg = model.pretrained_cfg
    split = get_dataset_spec("mnist_demo").reader(data_root(None), False, False)
    preprocess = cfg.transforms()
    batch = torch.stack([preprocess(Image.fromarray(img[0].numpy())) for img in split.images])  # mode "L" images
    assert torch.equal(batch, normalize(split.images, cfg.mean, cfg.std))
    with torch.no_grad():
        correct = (model(batch).argmax(1) == split.labels).sum().item()
    assert correct / len(split.labels) == evaluate_model(model, "mnist_demo")["top1"]


def test_other_sizes_are_resized_on_the_shorter_side_and_centre_cropped():
    """A 64x48 photo: its shorter side becomes 32 and the 32x32 centre is kept, so a border only at the left and
    right edges (outside the centre square) is cropped away and the output is the centre's colour everywhere."""
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :] = (200, 100, 50)
    pixels[:, :4] = pixels[:, -4:] = (0, 255, 0)  # outside the central 48x48 square and its resize filter
    out = CIFAR_CFG.transforms()(Image.fromarray(pixels))
    assert out.shape == (3, 32, 32)
    centre = normalize(torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1), *CIFAR100)
    assert torch.allclose(out, centre.expand(3, 32, 32), atol=1e-5)


@pytest.mark.parametrize("size", [(32, 64), (64, 32)])
def test_a_weight_of_a_non_square_input_size_gets_the_picture_cropped_never_padded_with_black(size):
    """A 3x32x64 weight's transforms() resized a square photo's shorter side to 32 and cropped 64 wide from 32: half
    the input black, without a word."""
    from bitnetcnn.images import fit_to_size

    photo = torch.full((3, 100, 100), 200, dtype=torch.uint8)
    out = fit_to_size(photo, *size)
    assert tuple(out.shape) == (3, *size) and bool((out == 200).all())
    wide = torch.full((3, 50, 200), 7, dtype=torch.uint8)  # wider than the size: cropped at the sides
    assert bool((fit_to_size(wide, *size) == 7).all())


def test_a_grey_photo_gets_the_channels_of_a_colour_model_and_a_batch_stays_a_batch():
    grey = Image.fromarray(np.full((32, 32), 128, dtype=np.uint8))
    assert CIFAR_CFG.transforms()(grey).shape == (3, 32, 32)
    batch = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    assert CIFAR_CFG.transforms()(batch).shape == (4, 3, 32, 32)


def test_float_images_are_read_as_0_to_1_as_torchvision_gives_them():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    as_float = images.float() / 255
    kept = as_float.clone()
    out = CIFAR_CFG.transforms()(as_float)
    assert torch.allclose(out, normalize(images, *CIFAR100), atol=1e-6)
    assert torch.equal(as_float, kept)  # the caller's tensor is left as it was


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    """A phone stores a portrait photo sideways with an EXIF orientation tag; viewers turn it upright, and so must
    the model's preprocessing (PIL's ``Image.open`` does not): read sideways, a digit is another digit."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 12:16] = 255  # a vertical bar, off the diagonal
    pixels[4:8, 8:20] = 200
    upright = Image.fromarray(pixels)
    sideways = upright.rotate(90, expand=True)  # stored turned left; orientation 6 says: turn right to show it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.png"
    sideways.save(path, exif=exif)
    preprocess = load("bitnet_mnist", pretrained=True).pretrained_cfg.transforms()
    with Image.open(path) as opened:
        assert torch.equal(preprocess(opened), preprocess(upright))
    assert not torch.equal(preprocess(sideways), preprocess(upright))  # the test image is not symmetric


def test_16_bit_and_float_grey_images_are_rescaled_not_clipped(tmp_path):
    """A 16-bit greyscale PNG (pixels 0..65535) is the 8-bit image with more levels: it must reach the model as the
    same floats. PIL's ``convert("L")`` clips it to 0/255 instead. A float ("F") image is 0..1 pixels; one outside
    that range is refused."""
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels.astype(np.uint16) * 257).save(path)
    preprocess = load("bitnet_mnist", pretrained=True).pretrained_cfg.transforms()
    eight_bit = preprocess(Image.fromarray(pixels))
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
        assert torch.allclose(preprocess(opened), eight_bit, atol=1e-5)
    assert torch.allclose(preprocess(Image.fromarray(pixels.astype(np.float32) / 255, "F")), eight_bit, atol=1e-5)
    square = np.arange(32 * 32).reshape(32, 32).astype(np.uint8)  # a colour model's size: no resize to round
    grey = Image.fromarray(square.astype(np.uint16) * 257)
    assert torch.allclose(CIFAR_CFG.transforms()(grey), CIFAR_CFG.transforms()(Image.fromarray(square)), atol=1e-5)
    with pytest.raises(ValueError, match="spans 0..255: scale it"):
        preprocess(Image.fromarray(pixels.astype(np.float32), "F"))
    # rounded to the nearest 8-bit level, as an 8-bit save of the picture would be (not truncated: a level darker)
    from bitnetcnn.images import pil_to_uint8

    levels = np.array([[0, 25879, 25750, 65535]], dtype=np.uint16)  # 100.70, 100.19 of 255
    assert pil_to_uint8(Image.fromarray(levels), 1).flatten().tolist() == [0, 101, 100, 255]
    # a transparent grey level (PNG tRNS) no pixel has: the same floats (it went through RGBA, clipped to 8 bits:
    # almost white); one some pixels have is refused like any transparency
    for level, refused in ((1, False), (257, True)):
        Image.fromarray(pixels.astype(np.uint16) * 257).save(path, transparency=level)
        with Image.open(path) as opened:
            assert opened.info["transparency"] == level
            if refused:
                with pytest.raises(ValueError, match="transparent pixels"):
                    preprocess(opened)
            else:
                assert torch.allclose(preprocess(opened), eight_bit, atol=1e-5)


def test_a_weight_that_names_its_data_set_only_still_refuses_another_with_other_labels(tmp_path):
    """The published MNIST weight's header names its data set but not its classes (saved before they were kept).
    Fashion-MNIST has MNIST's size, channels and number of classes, so only the names tell them apart: the loader
    takes the data set's own names, and eval refuses Fashion-MNIST before reading it, as it refuses CIFAR-10 for a
    CIFAR-100 weight."""
    from bitnetcnn.checkpoint import load_checkpoint
    from bitnetcnn.class_names import DIGITS
    from bitnetcnn.hub import pretrained_path

    model = load_checkpoint(pretrained_path("bitnet_mnist"))  # as `bitnetcnn eval bitnet_mnist` reads it
    assert model.pretrained_cfg.class_names == DIGITS
    with pytest.raises(ValueError, match="labels would not mean the same; evaluate it on mnist"):
        evaluate_model(model, "fashion_mnist", data_dir=str(tmp_path))  # refused before any image is read
    # its own data set with its names in another order was told to "evaluate it on mnist", what it was doing
    import dataclasses

    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, class_names=DIGITS[::-1])
    with pytest.raises(ValueError, match=r"its class_names are not in mnist's label order: save it again"):
        evaluate_model(model, "mnist", data_dir=str(tmp_path))


def test_normalize_leaves_a_float_batch_as_it_was():
    """normalize's float path once divided the caller's own tensor in place."""
    images = torch.full((1, 1, 2, 2), 255.0)
    normalize(images, [0.5], [0.25])
    assert torch.equal(images, torch.full((1, 1, 2, 2), 255.0))


def test_wrong_inputs_say_what_the_model_takes():
    preprocess = CIFAR_CFG.transforms()
    with pytest.raises(ValueError, match="3-channel"):
        preprocess(torch.zeros(1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"channels last, so x\.permute\(2, 0, 1\) first"):  # an (H, W, C) array's
        preprocess(torch.zeros(32, 32, 3, dtype=torch.uint8))
    digits = load("bitnet_mnist", pretrained=True).pretrained_cfg.transforms()
    with pytest.raises(ValueError, match=r"one \(H, W\) grey picture: give it its channel axis, x\[None\]"):
        digits(torch.zeros(28, 28, dtype=torch.uint8))  # "for a PIL image, pass the image", which it was not
    with pytest.raises(TypeError, match="PIL image or a tensor"):
        preprocess(np.zeros((32, 32, 3), dtype=np.uint8))
    # integer pixels are read as everything that normalizes reads them (normalization.as_pixels); they were a TypeError
    as_ints = torch.randint(0, 256, (3, 32, 32))
    assert torch.equal(preprocess(as_ints), preprocess(as_ints.to(torch.uint8)))
    with pytest.raises(ValueError, match="integer images must be pixels in 0..255"):
        preprocess(torch.full((3, 32, 32), 300))
    with pytest.raises(ValueError, match="bool images are not pixels"):
        preprocess(torch.ones(3, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="input_size, mean, std"):
        PretrainedCfg("bit_resnet18").transforms()
    with pytest.raises(ValueError, match="C values of mean and std"):
        Preprocess((3, 32, 32), (0.5,), (0.25,))


def test_bitnetcnn_predict_names_the_digits_of_image_files(tmp_path, capsys):
    """`bitnetcnn predict bitnet_mnist FILES`: demo digits saved as RGB PNGs of other sizes come back as their
    digits' names, most probable first."""
    split = get_dataset_spec("mnist_demo").reader(data_root(None), False, False)
    files = []
    for k in range(10):
        path = tmp_path / f"digit{k}.png"
        Image.fromarray(split.images[k, 0].numpy()).resize((56 + k, 56 + k)).convert("RGB").save(path)
        files.append(str(path))
    assert main(["predict", "bitnet_mnist", *files, "--top", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == files
    assert all(len(r["top"]) == 3 for r in results)
    for r in results:
        probabilities = [t["probability"] for t in r["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-5
    right = sum(r["top"][0]["class"] == str(label.item()) for r, label in zip(results, split.labels[:10]))
    assert right >= 9
    # each result says what was done to fit the model: resized (grey pixels in an RGB file: nothing converted)
    assert [r["resized_from"] for r in results] == [[56 + k, 56 + k] for k in range(10)]
    assert not any("cropped" in r or "converted" in r or "brightness" in r for r in results), results
    # the same digits black on white (the usual home-made digit) get wrong, confident answers: the result says why
    dark_on_light = tmp_path / "inverted.png"
    Image.fromarray(255 - split.images[0, 0].numpy()).save(dark_on_light)
    assert main(["predict", "bitnet_mnist", str(dark_on_light)]) == 0
    (inverted,) = json.loads(capsys.readouterr().out)
    assert "where the training images' is 0.13: a picture of the other polarity" in inverted["brightness"]
    # a damaged file among them costs its own answer only (all were lost to its error), and is named
    (tmp_path / "cut.png").write_bytes(Path(files[0]).read_bytes()[:60])
    assert main(["predict", "bitnet_mnist", files[0], str(tmp_path / "cut.png"), files[1], "--top", "3"]) == 2
    out, err = capsys.readouterr()
    answered = json.loads(out)
    assert [r["top"] for r in answered[::2]] == [results[0]["top"], results[1]["top"]]
    assert answered[1]["image"] == str(tmp_path / "cut.png") and set(answered[1]) == {"image", "error"}
    assert "cannot be read as an image" in answered[1]["error"]
    assert f"bitnetcnn predict: error: {tmp_path / 'cut.png'} cannot be read" in err
    # the model forgotten: argparse said "the following arguments are required: images", not what it read
    assert main(["predict", files[0]]) == 2
    err = capsys.readouterr().err
    assert f"no images given: the model comes first, then the images (bitnetcnn predict MODEL IMAGE...); " \
           f"{files[0]!r} was read as the model" in err and err.count("\n") == 1, err


def test_bitnetcnn_predict_says_what_it_changed_of_an_image_and_answers_as_on_its_tensor(tmp_path, capsys):
    """A colour photo given to the digit model was turned grey, and a strip of ten digits cropped to one, without a
    word; and the PIL image's channels-last view made bitnet_mobilenetv2 (8-bit activations) round some ties the
    other way than on the same pixels as a tensor (CIFAR-100 test image 522: lobster against crab)."""
    rng = torch.Generator().manual_seed(0)
    photo, strip, square = tmp_path / "photo.png", tmp_path / "strip.png", tmp_path / "digit.png"
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()).save(photo)
    Image.fromarray(torch.randint(0, 256, (28, 280), generator=rng, dtype=torch.uint8).numpy()).save(strip)
    Image.fromarray(torch.randint(0, 256, (28, 28), generator=rng, dtype=torch.uint8).numpy()).save(square)
    assert main(["predict", "bitnet_mnist", str(photo), str(strip), str(square), "--top", "1"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said[0]["converted"] == "RGB colour image to greyscale" and said[0]["resized_from"] == [32, 32]
    assert said[1]["resized_from"] == [28, 280] and said[1]["cropped"] is True and "converted" not in said[1]
    assert set(said[2]) == {"image", "top"}  # at the model's size and grey: nothing done
    assert main(["predict", "bitnet_resnet18", str(square), "--top", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["converted"] == "greyscale image to 3 equal channels"
    grey_rgb = tmp_path / "grey_rgb.png"  # an RGB file of a grey picture: nothing to convert for a colour model
    Image.open(square).convert("RGB").resize((32, 32)).save(grey_rgb)
    assert main(["predict", "bitnet_resnet18", str(grey_rgb), "--top", "1"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"image", "top"}
    cfg = next(c for c in list_pretrained() if c.hub_entry == "bitnet_mobilenetv2")
    assert cfg.transforms()(Image.open(photo)).is_contiguous()


def test_bitnetcnn_predict_refuses_what_is_not_an_image(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main(["predict", "bitnet_mnist", str(text)]) == 2
    assert "is not an image file PIL can read" in capsys.readouterr().err
    assert main(["predict", "bitnet_mnist", str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().err


def test_pixels_a_model_cannot_read_as_they_are_are_refused_not_guessed(tmp_path, capsys):
    """A digit drawn on a transparent canvas lost its alpha and was classified as a blank (p=0.999); a float TIFF
    with a NaN gave "probability": NaN; float pixels 0..255 and float64 pixels passed transforms() as something
    else; a damaged file and a folder were not named as such."""
    from bitnetcnn.images import UnreadablePixels, pil_to_pixels

    digit = get_dataset_spec("mnist_demo").reader(data_root(None), False, False).images[0, 0].numpy()
    ink = np.zeros((28, 28, 4), np.uint8)
    ink[..., 3] = digit
    with pytest.raises(UnreadablePixels, match="transparent pixels"):
        pil_to_pixels(Image.fromarray(ink, "RGBA"), 1)
    opaque = np.dstack([np.repeat(digit[..., None], 3, -1), np.full((28, 28), 255, np.uint8)])
    assert torch.equal(pil_to_pixels(Image.fromarray(opaque, "RGBA"), 1)[0], torch.from_numpy(digit))
    nan = digit.astype(np.float32) / 255
    nan[0, 0] = np.nan
    with pytest.raises(UnreadablePixels, match="NaN"):
        pil_to_pixels(Image.fromarray(nan, "F"), 1)

    mnist = load("bitnet_mnist", pretrained=True).pretrained_cfg.transforms()
    with pytest.raises(ValueError, match=r"float images are pixels in 0..1 .* span 0..255"):
        mnist(torch.from_numpy(digit).float()[None])
    with pytest.raises(ValueError, match="NaN or infinite"):
        mnist(torch.full((1, 28, 28), float("nan")))
    as_float64 = torch.from_numpy(digit[None] / 255.0)
    assert as_float64.dtype == torch.float64 and mnist(as_float64).dtype == torch.float32
    # a half-precision decode reached the model as float16, which failed there naming no input
    assert torch.equal(mnist(as_float64.half()), mnist(as_float64.half().float()))
    # 8-bit values in a 16- or 32-bit integer file were read as 16 bits, 257 times too dark ("1" at 0.83 for a 7)
    for wide in (digit.astype(np.uint16), digit.astype(np.int32)):
        with pytest.raises(UnreadablePixels, match=r"spans only 0..255: 8-bit values in a 16-bit file"):
            pil_to_pixels(Image.fromarray(wide), 1)
    # a palette whose transparent entry no pixel uses reads as it is, and predict said so with PIL's warning
    palette = Image.new("P", (28, 28))
    palette.putpalette([0, 0, 0, 255, 255, 255, 10, 200, 30] + [0] * 759)
    palette.putpixel((5, 9), 2)
    palette.info["transparency"] = bytes([255, 255, 255, 0] + [255] * 252)
    palette.save(tmp_path / "palette.png", transparency=palette.info["transparency"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["predict", "bitnet_mnist", str(tmp_path / "palette.png")]) == 0
        assert "P colour image to greyscale" in capsys.readouterr().out
        from bitnetcnn.predict import _in_colour
        assert _in_colour(palette)
    Image.fromarray(digit.astype(np.int32)).save(tmp_path / "wide.tif")
    assert main(["predict", "bitnet_mnist", str(tmp_path / "wide.tif")]) == 2
    assert "8-bit values in a 16-bit file" in capsys.readouterr().err

    Image.fromarray(ink, "RGBA").save(tmp_path / "drawn.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "drawn.png").read_bytes()[:60])
    for name, words in (("drawn.png", "has transparent pixels"), ("cut.png", "cannot be read as an image"),
                        ("", "is a folder")):
        assert main(["predict", "bitnet_mnist", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert words in err and str(tmp_path / name) in err, err


def test_images_of_other_channels_than_the_normalization_and_bool_images_are_refused():
    """A grey uint8 batch broadcast against an RGB model's three means and ran (the deployed MobileNetV2 at 36%
    against 62%, no word), as calibration and check images too; a bool batch (a binarized digit) ran as pixels 0
    and 1 of 255 (the deployed MNIST model at 11%)."""
    from bitnetcnn.normalization import CIFAR100, as_pixels, normalize

    grey = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"have 1 channels where the model's normalization has 3: give \(N, 3, H, W\)"):
        normalize(grey, *CIFAR100)
    with pytest.raises(ValueError, match="have 3 channels where the model's normalization has 1"):
        normalize(grey.repeat(1, 3, 1, 1), (0.1307,), (0.3081,))
    assert normalize(grey.repeat(1, 3, 1, 1), *CIFAR100).shape == (2, 3, 8, 8)
    assert normalize(grey[0], (0.1307,), (0.3081,)).shape == (1, 8, 8)  # one image, unbatched
    with pytest.raises(ValueError, match=r"bool images are not pixels"):
        as_pixels(grey > 128)


def test_an_empty_or_nan_image_and_a_damaged_exif_block_are_refused_by_name(tmp_path, capsys):
    """A 0-pixel side was a ZeroDivisionError; NaN floats were told to 'divide by 255'; a PNG whose eXIf chunk is
    garbage raised SyntaxError from Pillow's lazy EXIF reading, a traceback that lost the other images' answers."""
    preprocess = CIFAR_CFG.transforms()
    with pytest.raises(ValueError, match="0x5 pixels has nothing to classify"):
        preprocess(torch.zeros(3, 0, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        preprocess(torch.full((3, 32, 32), float("nan")))
    assert preprocess(torch.zeros(0, 3, 32, 32, dtype=torch.uint8)).shape == (0, 3, 32, 32)  # an empty batch is fine
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("L", (28, 28)).save(good)
    Image.new("L", (28, 28)).save(bad, exif=b"Exif\x00\x00garbage!")
    assert main(["predict", "bitnet_mnist", str(good), str(bad)]) == 2
    said = capsys.readouterr()
    answers = json.loads(said.out)
    assert [a["image"] for a in answers] == [str(good), str(bad)] and "top" in answers[0], said.out
    assert "its EXIF metadata is damaged" in answers[1]["error"], answers[1]


def test_predict_files_takes_one_path_and_refuses_a_top_of_nothing(tmp_path):
    """A str was iterated letter by letter ("i: no such image file"); top=0 answered nothing, top=-1 was torch's
    "selected index k out of range"."""
    from bitnetcnn.predict import predict_files

    model = load("bitnet_mnist", pretrained=True)
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    assert [r["image"] for r in predict_files(model, str(image), top=1)] == [str(image)]
    for top in (0, -1):
        with pytest.raises(ValueError, match="top must be a whole number of classes >= 1"):
            predict_files(model, [image], top=top)
    # a picture past Pillow's size limit: Pillow's "decompression bomb DOS attack" words alone, nothing to do
    import PIL.Image

    with pytest.MonkeyPatch.context() as m:
        m.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
        with pytest.raises(ValueError, match=r"digit.png is larger than Pillow opens \(200 pixels.*resize it first"):
            predict_files(model, [image])
    # a PIL image, one or in a list, is not a file: said with what to do (a TypeError of os.fspath's words before)
    with Image.open(image) as opened:
        for given in (opened, [opened]):
            with pytest.raises(TypeError, match="predict_files takes image file paths, not PngImageFile: for an "
                                                "image in memory, model"):
                predict_files(model, given)


def test_predict_files_leaves_the_model_as_it_was_and_checks_its_class_names_against_its_scores(tmp_path):
    """It left a model in training mode in eval mode (a training loop predicting between steps trained on with
    BatchNorm frozen); a model given a new 10-class head answered with the first 10 of its old 100 class names
    (an IndexError past them). A bf16 model answers as its float32 self; a top past the classes gives them all."""
    from bitnetcnn.predict import predict_files

    model = load("bitnet_mnist", pretrained=True)
    image = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)).save(image)
    expected = predict_files(model, [image], top=3)[0]["top"]
    assert len(predict_files(model, [image], top=50)[0]["top"]) == 10

    model.train()
    first = next(m for m in model.modules() if m is not model)
    first.eval()  # each module's own mode comes back, not the top one's for all
    assert [r["class"] for r in predict_files(model, [image], top=3)[0]["top"]] == [r["class"] for r in expected]
    assert model.training and not first.training

    bf16 = predict_files(load("bitnet_mnist", pretrained=True).to(torch.bfloat16), [image], top=1)[0]["top"]
    assert bf16[0]["class"] == expected[0]["class"]

    for classes in (4, 12):  # a head of another number of classes on the model's own
        retrained = torch.nn.Sequential(model, torch.nn.Linear(10, classes))
        retrained.pretrained_cfg = model.pretrained_cfg
        with pytest.raises(ValueError, match=f"gives {classes} scores but its pretrained_cfg names 10 classes"):
            predict_files(retrained, [image])


def test_a_lab_image_reads_on_a_greyscale_model_as_its_rgb_self_does(tmp_path):
    """Pillow converts LAB to RGB only: a LAB TIFF that a colour model read was "conversion from LAB to RGB not
    supported" on a digit model."""
    from bitnetcnn.predict import predict_files

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    rgb.convert("LAB").save(tmp_path / "lab.tif")
    rgb.convert("LAB").convert("RGB").save(tmp_path / "rgb.png")
    model = load("bitnet_mnist", pretrained=True)
    lab, same = predict_files(model, [tmp_path / "lab.tif", tmp_path / "rgb.png"], top=3)
    assert lab["top"] == same["top"] and lab["converted"] == "LAB colour image to greyscale"


def test_predict_says_an_animated_image_was_read_by_its_first_frame(tmp_path, capsys):
    frames = [Image.new("L", (28, 28), shade) for shade in (0, 128, 255)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    assert main(["predict", "bitnet_mnist", str(tmp_path / "moving.gif")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["frame"] == "the first of 3"


def test_eval_says_when_the_data_set_it_contradicts_came_from_the_files_own_metadata(tmp_path):
    """Without --dataset the data set is the file's: "predicts 5 classes but 'mnist' has 10" read as the user's
    mistake."""
    import bitnetcnn
    from bitnetcnn.train.evaluate import evaluate_checkpoint

    path = bitnetcnn.save_checkpoint(bitnetcnn.create_model("bitnet_cnn", width=8, num_classes=5), tmp_path / "five.bnc",
                                     {"dataset": "mnist"})
    with pytest.raises(ValueError, match="predicts 5 classes but 'mnist', the data set its metadata names, has 10; "
                                         "its metadata is wrong: pass --dataset"):
        evaluate_checkpoint(str(path))
    with pytest.raises(ValueError, match=r"predicts 5 classes but 'mnist' has 10$"):
        evaluate_checkpoint(str(path), "mnist")


def test_a_non_square_size_keeps_the_picture_s_proportions():
    """Covering the size then cropping keeps the aspect ratio: with the smaller of the two scales (fitting inside,
    then nothing to crop) a 10x20 picture was squashed into 8x4, its whole width in 4 columns."""
    from bitnetcnn.images import fit_to_size

    columns = torch.arange(20, dtype=torch.float32).expand(1, 10, 20)  # each pixel holds its column
    out = fit_to_size(columns, 8, 4)
    assert tuple(out.shape) == (1, 8, 4)
    assert 7 < out.min().item() and out.max().item() < 12  # the centre columns only


def test_a_larger_photo_is_resized_with_antialiasing_as_torchvision_s_presets_do():
    """A fine pattern shrunk 3x must average to grey, as ``Resize(size, antialias=True)`` and PIL give it: without
    the antialiasing filter, bilinear resizing samples a few of the pixels and a one-pixel checkerboard comes out
    as stripes of near black and white (the other tests resize flat colours, which any filter keeps)."""
    from torchvision.transforms import v2

    rows, cols = np.indices((96, 128))
    board = np.where((rows + cols) % 2 == 0, 255, 0).astype(np.uint8)
    photo = Image.fromarray(np.stack([board, board, 255 - board], axis=2))
    out = CIFAR_CFG.transforms()(photo)
    torchvision_preset = v2.Compose([v2.PILToTensor(), v2.Resize(32, antialias=True), v2.CenterCrop(32)])
    assert torch.equal(out, normalize(torchvision_preset(photo), *CIFAR100))
    grey = normalize(torch.full((3, 1, 1), 127.5), *CIFAR100)
    assert (out - grey).abs().max() < 0.1  # within a few levels of 255 of the grey average


def test_a_12_bit_picture_in_a_16_bit_file_and_a_closed_picture_are_refused_by_name(tmp_path):
    """A camera's 12 bits saved in a 16-bit PNG (Pillow ignores its sBIT chunk) read a sixteenth as bright: a digit
    model answered 14 of 100 right, sure of each. A picture whose file was closed before its pixels were read was
    Pillow's bare AssertionError."""
    preprocess = load("bitnet_mnist", pretrained=True).pretrained_cfg.transforms()
    twelve = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 5  # up to 3915
    with pytest.raises(ValueError, match=r"10- to 12-bit values in a 16-bit file.*scale it to 0..65535"):
        preprocess(Image.fromarray(twelve))
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    with Image.open(path) as opened:
        pass
    with pytest.raises(ValueError, match="file was closed before its pixels were read"):
        preprocess(opened)


def test_what_predict_says_it_did_to_a_picture_in_cases_that_differ():
    """The notes in numbers: a picture of a non-square model's own aspect is resized, not cropped; a picture whose
    red and green agree but blue differs is in colour; the brightness is the picture's own (mean and std undone),
    0.70 where MNIST's training images average 0.13 (read without the mean: 0.57, under the threshold)."""
    from bitnetcnn.predict import _brightness_note, _in_colour, _what_was_done

    assert _what_was_done(Image.new("RGB", (80, 40)), (3, 20, 40)) == {"resized_from": [40, 80]}
    assert _what_was_done(Image.new("RGB", (40, 40)), (3, 20, 40)) == {"resized_from": [40, 40], "cropped": True}
    assert _in_colour(Image.new("RGB", (4, 4), (10, 10, 200)))
    assert not _in_colour(Image.new("RGB", (4, 4), (10, 10, 10)))
    for grey in ("L", "I;16", "F"):  # a wide grey file too gets its 3 equal channels said
        assert _what_was_done(Image.new(grey, (4, 4)), (3, 4, 4)) == {"converted": "greyscale image to 3 equal "
                                                                                     "channels"}, grey
    mean, std = (0.13,), (0.3,)
    assert "brightness" in _brightness_note(normalize(torch.full((1, 4, 4), 0.7 * 255), mean, std), mean, std)
    assert _brightness_note(normalize(torch.full((1, 4, 4), 0.5 * 255), mean, std), mean, std) == {}


def test_predict_on_one_unreadable_image_says_its_error_alone(tmp_path, capsys):
    """One image only: its one-line error is the answer; a JSON list holding that error as well (what several
    images get, so that the readable ones are answered) would print it twice."""
    fake = tmp_path / "x.png"
    fake.write_text("not an image")
    assert main(["predict", "bitnet_mnist", str(fake)]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith(f"bitnetcnn predict: error: {fake}") and said.err.count("\n") == 1, said.err
    assert "is not an image file PIL can read" in said.err
