"""Time of the Slicer module's live threshold: re-thresholding a 256x256x180 anomaly map in place.

A detection result is written into a real MRML scene (``slicer-core`` wheel, no Qt) on an oblique, 1 x 1 x 1.2 mm
grid: an anomaly map shaped like a real one (smooth noise inside a head-sized ellipsoid, zero outside, a few
lesion-like blobs). Then :func:`MedAutoencoderLib.slicer.results.apply_threshold` runs at several thresholds, as a
user dragging the slider does: labelmap, segmentation, components with the minimum size, findings table and
summary. The lowest threshold, with 2 % of the head above it, is the worst case: components all over the head.
Prints, per threshold, the median of ``--repeats`` runs of the whole update and of its component search alone,
with the number of findings, and the machine's load; last, the update with the segmentation's 3D surface rebuilt.

    python benchmarks/benchmark_rethreshold.py --repeats 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import types

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

SHAPE_KJI = (180, 256, 256)
SPACING = (1.0, 1.0, 1.2)


def scene_with_result():
    """A scene with the module's logics registered and one detection result written into it."""
    import slicer

    from MedAutoencoderLib.slicer import bridge as slicer_bridge

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app)
    app.SetModuleLogic("Segmentations", segmentations)
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentations))

    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[:SHAPE_KJI[0], :SHAPE_KJI[1], :SHAPE_KJI[2]]
    head = ((k - 90) / 75.0) ** 2 + ((j - 128) / 100.0) ** 2 + ((i - 128) / 85.0) ** 2 < 1.0
    anomaly_map = ndimage.gaussian_filter(rng.random(SHAPE_KJI, dtype=np.float32), 1.5)
    anomaly_map = np.clip((anomaly_map - anomaly_map.mean()) / anomaly_map.std() * 0.05 + 0.1, 0, None)
    for centre, radius in (((60, 100, 90), 9), ((110, 150, 170), 6), ((80, 170, 120), 4)):
        blob = sum(((axis - c) / radius) ** 2 for axis, c in zip((k, j, i), centre)) < 1.0
        anomaly_map[blob] += 0.3
    anomaly_map[~head] = 0.0
    anomaly_map = anomaly_map.astype(np.float32)

    image = sitk.GetImageFromArray((head * 100.0).astype(np.float32))
    image.SetSpacing(SPACING)
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    input_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    slicer_bridge.update_volume_node_from_sitk(input_node, image)

    def like(array):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    from MedAutoencoderLib.detection import threshold_mask

    threshold = float(np.quantile(anomaly_map[head], 0.999))
    map_image = like(anomaly_map)
    result = slicer_bridge.WorkerResult(reconstruction=image, anomaly_map=map_image,
                                        anomaly_mask=threshold_mask(map_image, threshold, 0.2),
                                        summary={"threshold": threshold, "min_component_ml": 0.2,
                                                 "anomaly_score": 0.5})
    return slicer_bridge.apply_detection_result(input_node, result).as_dict(), threshold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from MedAutoencoderLib.slicer import results

    nodes, calibrated = scene_with_result()
    import slicer.util

    values, grid = slicer.util.arrayFromVolume(nodes["anomaly_map"]), results.world_grid(nodes["anomaly_map"])
    print(f"anomaly map {SHAPE_KJI[::-1]} voxels (x y z), threshold calibrated at {calibrated:.4f}; "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    head_values = values[values > 0]
    worst = float(np.quantile(head_values, 0.98))  # 2 % of the head above: noise specks all over it
    for label, threshold in [("2 % of the head above", worst)] + [
            (f"{factor:.1f} x calibrated", calibrated * factor) for factor in (0.7, 1.0, 1.3, 2.0)]:
        results.apply_threshold(nodes, threshold)  # first use of this threshold's sizes
        whole, search = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            summary = results.apply_threshold(nodes, threshold)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            results.find_components(values, grid, threshold, 0.2)
            search.append(time.perf_counter() - start)
        print(f"threshold {threshold:.4f} ({label}): {summary['n_components']:4d} findings, "
              f"{summary['anomalous_volume_ml']:8.2f} mL; apply_threshold median {statistics.median(whole):.3f} s "
              f"(min {min(whole):.3f}, max {max(whole):.3f}), component search alone "
              f"{statistics.median(search):.3f} s, of {args.repeats} runs")
    nodes["anomaly_segmentation"].CreateClosedSurfaceRepresentation()  # the result layout shows it in 3D
    whole = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results.apply_threshold(nodes, calibrated)
        whole.append(time.perf_counter() - start)
    print(f"threshold {calibrated:.4f} with the segmentation's 3D surface rebuilt too: apply_threshold median "
          f"{statistics.median(whole):.3f} s of {args.repeats} runs")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
